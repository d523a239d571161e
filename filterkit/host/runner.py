"""Run a spec's cases through a ``PluginHost``, one HTTP stream per case, like Envoy would."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..spec import Case, Spec
from ..verdict import LogRecord, Observation
from .plugin import PluginFailed, PluginHost
from .state import Pairs
from .vm import GuestFailure


@dataclass
class HostRun:
    """Everything one host run saw: per-case observations plus what belongs to no case."""

    observations: list[Observation]
    plugin_logs: list[LogRecord] = field(default_factory=list)  # start, configure, shutdown …
    # Failures of the plugin outside any request: a trap at shutdown (proxy_on_done/proxy_on_delete of
    # the root context), or while starting/configuring (those also fail the case that needed it).
    vm_errors: list[str] = field(default_factory=list)
    unimplemented: dict[str, str] = field(default_factory=dict)  # imports the host does not provide
    vm_starts: int = 0  # 1 + one fresh VM per trap


def request_headers(case: Case) -> Pairs:
    """The request headers the filter sees in Envoy for an HTTP/1.1 edge request of this case:
    pseudo headers (host becomes :authority), the case's headers, then what Envoy's connection
    manager adds before filters run (x-forwarded-proto, x-request-id)."""
    request = case.request
    headers = case.request_headers()
    authority = next((v for k, v in headers if k == "host"), request.authority)
    pairs: Pairs = [(":authority", authority), (":path", request.path), (":method", request.method),
                    (":scheme", "http")]
    pairs += [(k, v) for k, v in headers if k != "host"]
    names = {k for k, _ in pairs}
    if request.body and "content-length" not in names:
        pairs.append(("content-length", str(len(request.body))))
    if "x-forwarded-proto" not in names:
        pairs.append(("x-forwarded-proto", "http"))
    if "x-request-id" not in names:
        pairs.append(("x-request-id", str(uuid.uuid4())))
    return pairs


def run_spec(spec: Spec, wasm_path: Path | str, *, default_config: str, root_id: str, vm_config: str = "",
             log_level: str = "trace", retire_old_roots: bool = True) -> HostRun:
    """Run every case on one VM (a fresh one after a trap). A case whose configuration differs from
    the previous case's gets a new root context; ``retire_old_roots`` says whether the old one is
    retired (Envoy replacing a filter configuration) or kept (several configurations side by side)."""
    host = PluginHost(wasm_path, plugin_config=default_config, vm_config=vm_config, root_id=root_id,
                      log_level=log_level, retire_old_roots=retire_old_roots)
    observations = []
    for case in spec.cases:
        started = time.perf_counter()
        try:
            host.ensure_started(spec.effective_config(case, default_config))
            stream = host.http_stream()
        except PluginFailed as err:
            detail = f": {err.failure.describe()}" if err.failure else ""
            observations.append(Observation(error=f"plugin failed to start: {err}{detail}",
                                            seconds=time.perf_counter() - started))
            continue
        except GuestFailure as failure:
            observations.append(Observation(error=f"plugin failed: {failure.describe()}",
                                            seconds=time.perf_counter() - started))
            continue
        observation = stream.exchange(request_headers(case), case.request.body, case.upstream)
        observations.append(observation)
    host.shutdown()
    return HostRun(observations=observations, plugin_logs=list(host.plugin_logs),
                   vm_errors=[f"{f.describe()}" for f in host.failures], unimplemented=dict(host.unimplemented),
                   vm_starts=host.vm_starts)


def observe_spec(spec: Spec, wasm_path: Path | str, *, default_config: str, root_id: str) -> list[Observation]:
    """One Observation per case (see ``run_spec`` for plugin-level logs and shutdown traps)."""
    return run_spec(spec, wasm_path, default_config=default_config, root_id=root_id).observations

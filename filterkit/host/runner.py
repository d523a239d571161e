"""Run a spec's cases through a ``PluginHost``, one HTTP stream per case, like Envoy would."""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..spec import UPSTREAM_CLUSTER, Case, HttpCallReply, Spec
from ..verdict import LogRecord, Observation
from .plugin import PluginFailed, PluginHost
from .state import CONNECTION_TERMINATED, HttpCallAnswer, MetricType, Pairs
from .vm import DEFAULT_MEMORY_LIMIT, FUEL_PER_CALL, GuestFailure

# The names filterkit's Envoy runner gives the plugin (filterkit/envoy/config.py), so properties such
# as plugin_vm_id read the same on both targets.
ENVOY_VM_ID = "filterkit"


@dataclass
class HostRun:
    """Everything one host run saw: per-case observations plus what belongs to no case."""

    observations: list[Observation]
    plugin_logs: list[LogRecord] = field(default_factory=list)  # start, configure, shutdown …
    # Failures of the plugin outside any request: a trap at shutdown (proxy_on_done/proxy_on_delete of
    # the root context), or while starting/configuring (those also fail the case that needed it).
    vm_errors: list[str] = field(default_factory=list)
    unimplemented: dict[str, str] = field(default_factory=dict)  # imports the host does not provide
    vm_starts: int = 0  # 1 + one fresh VM per trap (or per case with isolate=True)
    metrics: dict[str, int | list[int]] = field(default_factory=dict)  # the filter's metrics at the end
    memory: list[int] = field(default_factory=list)  # linear memory (bytes) after each case


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


def http_call_answer(reply: HttpCallReply) -> HttpCallAnswer:
    """A spec's reply as the filter receives it; ``reset: true`` (the connection closes before an answer)
    arrives the way Envoy delivers it, as its async client's 503 local reply."""
    if reply.reset:
        return dataclasses.replace(CONNECTION_TERMINATED, delay_ms=reply.delay_ms)
    return HttpCallAnswer(status=reply.status, headers=reply.headers, body=reply.body, delay_ms=reply.delay_ms)


def run_spec(spec: Spec, wasm_path: Path | str, *, default_config: str, root_id: str, vm_config: str = "",
             log_level: str = "trace", retire_old_roots: bool = True, vm_id: str = ENVOY_VM_ID,
             plugin_name: str | None = None, isolate: bool = False, memory_limit: int = DEFAULT_MEMORY_LIMIT,
             fuel: int = FUEL_PER_CALL) -> HostRun:
    """Run every case on one VM (a fresh one after a trap, or for every case with ``isolate``). A
    case whose configuration differs from the previous case's gets a new root context;
    ``retire_old_roots`` says whether the old one is retired (Envoy replacing a filter configuration)
    or kept (several configurations side by side).

    Per case: ``properties`` are set on its stream, ``http_calls`` answer the filter's http calls,
    ``ticks`` advance the virtual clock by that many tick periods first; the observation carries the
    filter's counters and gauges after the case."""
    clusters = {UPSTREAM_CLUSTER} | {name for case in spec.cases for name, _ in case.http_calls}
    host = PluginHost(wasm_path, plugin_config=default_config, vm_config=vm_config, root_id=root_id, vm_id=vm_id,
                      plugin_name=plugin_name, log_level=log_level, retire_old_roots=retire_old_roots,
                      clusters=clusters, memory_limit=memory_limit, fuel=fuel)
    observations = []
    memory = []
    for case in spec.cases:
        started = time.perf_counter()
        host.http_answers = {name: [http_call_answer(r) for r in replies] for name, replies in case.http_calls}
        try:
            if isolate and host.vm is not None:
                host.shutdown()
            host.ensure_started(spec.effective_config(case, default_config))
            if case.ticks and host.root is not None and host.root.tick_period_ms:
                host.advance_time(case.ticks * host.root.tick_period_ms)
            if host.failed is not None:
                raise host.failed
            stream = host.http_stream(properties=dict(case.properties))
        except PluginFailed as err:
            detail = f": {err.failure.describe()}" if err.failure else ""
            observations.append(Observation(error=f"plugin failed to start: {err}{detail}",
                                            seconds=time.perf_counter() - started, metrics=_metrics(host)))
            memory.append(host.memory_size)
            continue
        except GuestFailure as failure:
            observations.append(Observation(error=f"plugin failed: {failure.describe()}",
                                            seconds=time.perf_counter() - started, metrics=_metrics(host)))
            memory.append(host.memory_size)
            continue
        observation = stream.exchange(request_headers(case), case.request.body, case.upstream)
        observations.append(dataclasses.replace(observation, metrics=_metrics(host)))
        memory.append(host.memory_size)
    host.shutdown()
    return HostRun(observations=observations, plugin_logs=list(host.plugin_logs),
                   vm_errors=[f"{f.describe()}" for f in host.failures], unimplemented=dict(host.unimplemented),
                   vm_starts=host.vm_starts, metrics=host.metrics, memory=memory)


def _metrics(host: PluginHost) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((m.name, m.value) for m in host.shared.metrics.values() if m.kind != MetricType.HISTOGRAM))


def observe_spec(spec: Spec, wasm_path: Path | str, *, default_config: str, root_id: str) -> list[Observation]:
    """One Observation per case (see ``run_spec`` for plugin-level logs and shutdown traps)."""
    return run_spec(spec, wasm_path, default_config=default_config, root_id=root_id).observations

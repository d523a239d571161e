"""Lifecycle checks (``filterkit test --checks``): what a spec of single requests does not show, but
production does. Each check is a result like a case (``CheckResult``), reported in a "checks" section
and failing the exit code.

- ``empty configuration starts``: Envoy starts the filter with an empty plugin configuration (inline,
  fail-closed) and a request through it is not answered 5xx.
- ``reconfiguration keeps serving``: the filter's configuration is delivered by ECDS from a file; after
  baseline requests the file is replaced atomically (temp file + rename) with an equivalent configuration
  (same JSON, other formatting: a new plugin, the old root context is retired); once Envoy reports the
  update, every request must get the baseline status again (no 5xx).
- ``shutdown without trap``: Envoy is stopped (SIGTERM); no error/critical line of the wasm logger (a trap
  in proxy_on_done, a failed root context …) may appear during shutdown.
- ``linear memory flat``: the filter's linear memory over N requests on the in-process host (V8 in Envoy
  exposes no linear memory size): after a warm-up, growth beyond one 64 KiB page fails; reports bytes per
  request. Envoy's RSS over N requests is reported alongside (informational unless grossly growing,
  > ``RSS_LIMIT_PER_REQUEST``).
- ``wasm error stats zero``: Envoy's admin ``/stats``: every wasm / ECDS error counter (``*vm_reload_failure``,
  ``*remote_load_fetch_failures``, ``extension_config_discovery.*.{update_rejected,update_failure,config_fail}``,
  …) stays 0, and no request was answered with a ``wasm`` failure (``downstream_rq_5xx`` is 0).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import RunnerError
from .config import WasmFilter, ecds_file_name, render_ecds_resource, render_variant
from .logs import WASM_LOGGER
from .process import EnvoyProcess, EnvoyStartError

PAGE = 65536
WARMUP = 200
LINEAR_REQUESTS = 6000  # on the host; at ~37 bytes/request that is 3 pages of growth
RECONFIGURE_REQUESTS = 50
RSS_LIMIT_PER_REQUEST = 2048.0  # bytes; RSS is noisy (allocator, V8 heap), only gross growth fails
LINEAR_LIMIT_PER_REQUEST = 4.0  # bytes, and more than one page of growth


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    summary: str = ""
    details: tuple[str, ...] = ()
    seconds: float = 0.0
    figures: dict = field(default_factory=dict, compare=False)  # measured numbers (bytes/request, 503s …)


def run_checks(project, *, version: str, requests: int = 2000, binary: Path | str | None = None,
               wasm: Path | None = None, log: Callable[[str], None] = lambda line: None) -> tuple[CheckResult, ...]:
    """Run every lifecycle check for the built filter of ``project`` on Envoy ``version``."""
    from .binary import envoy_binary

    wasm = Path(wasm or project.wasm_path)
    envoy = envoy_binary(version, binary)
    results = [check_empty_configuration(project, envoy, wasm)]
    log(f"check: {results[-1].name}: {'ok' if results[-1].passed else 'FAILED'}")
    results.append(check_shutdown(project, envoy, wasm))
    log(f"check: {results[-1].name}: {'ok' if results[-1].passed else 'FAILED'}")
    results += check_running_envoy(project, envoy, wasm, requests=requests)
    log("check: RSS, reconfiguration, stats done")
    results.append(check_linear_memory(project, wasm, requests=max(requests, LINEAR_REQUESTS)))
    log(f"check: {results[-1].name}: {results[-1].summary}")
    return tuple(results)


# ------------------------------------------------------------------------------------------- helpers


def _filter(project, wasm: Path, config: str) -> WasmFilter:
    return WasmFilter(project.name, project.root_id, str(wasm), config)


def _equivalent(config: str) -> str:
    """Another text for the same configuration (so Envoy sees a change and makes a new plugin)."""
    try:
        value = json.loads(config)
    except ValueError:
        return config + "\n" if config else "{}"
    text = json.dumps(value, indent=1)
    return text if text != config else json.dumps(value, separators=(", ", ": "))


class _Client:
    """Keep-alive HTTP/1.1 requests to one Envoy listener."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str = "/filterkit-check") -> int:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request("GET", path, headers={"host": "filterkit.test", "x-filterkit-case": "check"})
                resp = self.conn.getresponse()
                resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                return resp.status
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    return 0
        return 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _error_lines(lines) -> list[str]:
    return [line.message.splitlines()[0][:300] for line in lines
            if line.kind == "log" and line.level in ("error", "critical") and line.logger == WASM_LOGGER]


def _stats(envoy: EnvoyProcess) -> dict[str, int]:
    status, body = envoy.admin_get("/stats?format=json")
    if status != 200:
        raise RunnerError(f"Envoy's admin API answered {status} to /stats")
    out = {}
    for stat in json.loads(body).get("stats", []):
        if "name" in stat and isinstance(stat.get("value"), int):
            out[stat["name"]] = stat["value"]
    return out


_ERROR_STAT = re.compile(r"(^wasm\..*(fail|failure|failures|failed|error|errors)$)"
                         r"|(^extension_config_discovery\..*\.(update_rejected|update_failure|config_fail)$)")


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# -------------------------------------------------------------------------------------------- checks


def check_empty_configuration(project, binary: Path, wasm: Path) -> CheckResult:
    name = "empty configuration starts"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="filterkit-check-") as tmp:
        envoy = _single_filter_envoy(project, binary, wasm, "", Path(tmp))
        try:
            envoy.start()
        except EnvoyStartError as err:
            reasons = _error_lines(err.lines) or [line.raw for line in err.lines[-5:]]
            return CheckResult(name, False, "Envoy refused to start the filter with an empty configuration",
                               tuple(reasons), time.monotonic() - started, {"started": False})
        with envoy:
            client = _Client(envoy.listener_ports()["filterkit"])
            status = client.get()
            client.close()
        if status == 0 or status >= 500:
            return CheckResult(name, False, f"a request with an empty configuration got {status or 'no answer'}",
                               tuple(_error_lines(envoy.lines())), time.monotonic() - started,
                               {"started": True, "status": status})
        return CheckResult(name, True, f"started, a request got {status}", (), time.monotonic() - started,
                           {"started": True, "status": status})


def check_running_envoy(project, binary: Path, wasm: Path, *, requests: int) -> list[CheckResult]:
    """Envoy RSS, reconfiguration and wasm error stats on one Envoy (ECDS from a file)."""
    names = ("reconfiguration keeps serving", "envoy RSS flat", "wasm error stats zero")
    started = time.monotonic()
    config_text = project.plugin_config_text
    with tempfile.TemporaryDirectory(prefix="filterkit-check-") as tmp:
        workdir = Path(tmp)
        base = _filter(project, wasm, config_text)
        rendered = render_variant("ecds", [base], listen_port=0, admin_port=0, ecds_dir=workdir, local_reply=True)
        for path, text in rendered.ecds_files.items():
            Path(path).write_text(text)
        ecds = workdir / ecds_file_name(project.name)
        bootstrap = workdir / "envoy.yaml"
        bootstrap.write_text(rendered.bootstrap)
        envoy = EnvoyProcess(binary, bootstrap, workdir=workdir)
        try:
            envoy.start()
        except EnvoyStartError as err:
            reasons = tuple(_error_lines(err.lines) or [line.raw for line in err.lines[-5:]])
            return [CheckResult(n, False, "Envoy did not start with the filter's default configuration (ECDS)",
                                reasons, time.monotonic() - started) for n in names]
        results: list[CheckResult] = []
        try:
            stat_prefix = f"extension_config_discovery.http_filter.filterkit.{project.name}"
            _wait_stat(envoy, f"{stat_prefix}.update_success", 1)
            client = _Client(envoy.listener_ports()["filterkit"])
            # --- baseline + RSS
            t0 = time.monotonic()
            baseline = [client.get() for _ in range(WARMUP)]
            expected = max(set(baseline), key=baseline.count)
            rss0 = _rss(envoy.pid)
            for _ in range(requests):
                client.get()
            rss1 = _rss(envoy.pid)
            per_request = ((rss1 - rss0) / requests) if rss0 is not None and rss1 is not None else None
            ok = per_request is not None and per_request <= RSS_LIMIT_PER_REQUEST
            results.append(CheckResult(
                "envoy RSS flat", ok,
                (f"Envoy RSS {rss0 / 1e6:.1f} MB → {rss1 / 1e6:.1f} MB over {requests} requests: "
                 f"{per_request:+.1f} bytes/request") if per_request is not None else "RSS not readable",
                () if ok else (f"limit {RSS_LIMIT_PER_REQUEST:.0f} bytes/request",), time.monotonic() - t0,
                {"rss_bytes_per_request": per_request, "requests": requests}))
            # --- reconfiguration through ECDS: atomic replace
            t0 = time.monotonic()
            new_text = render_ecds_resource(_filter(project, wasm, _equivalent(config_text)), version_info="2")
            scratch = workdir / (ecds.name + ".tmp")
            scratch.write_text(new_text)
            os.replace(scratch, ecds)
            updated = _wait_stat(envoy, f"{stat_prefix}.update_success", 2)
            after = [client.get() for _ in range(RECONFIGURE_REQUESTS)]
            bad = [s for s in after if s != expected]
            fives = sum(1 for s in after if s >= 500 or s == 0)
            details = []
            if not updated:
                details.append("Envoy did not report the ECDS update within 10 s")
            if bad:
                details.append(f"before: {expected} ({baseline.count(expected)}/{len(baseline)}); after: "
                               + ", ".join(f"{s}×{after.count(s)}" for s in sorted(set(after))))
                details += _error_lines(envoy.lines())[:5]
            results.append(CheckResult(
                "reconfiguration keeps serving", updated and not bad,
                f"{len(after) - len(bad)}/{len(after)} requests after the change answered {expected}"
                + (f", {fives} got 5xx" if fives else ""), tuple(details), time.monotonic() - t0,
                {"after": len(after), "bad": len(bad), "5xx": fives, "expected": expected}))
            client.close()
            # --- stats
            t0 = time.monotonic()
            stats = _stats(envoy)
            errors = {k: v for k, v in stats.items() if _ERROR_STAT.search(k) and v}
            rq5 = stats.get("http.filterkit.downstream_rq_5xx", 0)
            details = [f"{k} = {v}" for k, v in sorted(errors.items())]
            if rq5:
                details.append(f"http.filterkit.downstream_rq_5xx = {rq5}")
            results.append(CheckResult("wasm error stats zero", not details,
                                       "all wasm error counters 0" if not details else f"{len(details)} non-zero",
                                       tuple(details), time.monotonic() - t0, {"non_zero": dict(errors), "5xx": rq5}))
        finally:
            envoy.stop()
        order = {n: i for i, n in enumerate(names)}
        return sorted(results, key=lambda r: order.get(r.name, 99))


def check_shutdown(project, binary: Path, wasm: Path) -> CheckResult:
    """A fresh Envoy with the default configuration, one request, then SIGTERM: no wasm error lines."""
    name = "shutdown without trap"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="filterkit-check-") as tmp:
        envoy = _single_filter_envoy(project, binary, wasm, project.plugin_config_text, Path(tmp))
        try:
            envoy.start()
        except EnvoyStartError as err:
            return CheckResult(name, False, "Envoy did not start the filter with its default configuration",
                               tuple(_error_lines(err.lines)[:5]), time.monotonic() - started)
        try:
            client = _Client(envoy.listener_ports()["filterkit"])
            client.get()
            client.close()
            before = len(envoy.lines())
        finally:
            envoy.stop()
        shutdown = _error_lines(envoy.lines()[before:])
    return CheckResult(name, not shutdown, "no wasm errors at shutdown" if not shutdown else
                       f"{len(shutdown)} wasm error line(s) at shutdown", tuple(shutdown[:10]),
                       time.monotonic() - started, {"errors": len(shutdown)})


def _single_filter_envoy(project, binary: Path, wasm: Path, plugin_config: str, workdir: Path) -> EnvoyProcess:
    """An Envoy (not started yet) with the filter on one HTTP listener and local replies, in ``workdir``."""
    config = workdir / "envoy.yaml"
    config.write_text(render_variant("http", [_filter(project, wasm, plugin_config)], listen_port=0, admin_port=0,
                                     local_reply=True).bootstrap)
    return EnvoyProcess(binary, config, workdir=workdir)


def _wait_stat(envoy: EnvoyProcess, name: str, value: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _stats(envoy).get(name, 0) >= value:
                return True
        except (OSError, RunnerError, ValueError):
            pass
        time.sleep(0.05)
    return False


def check_linear_memory(project, wasm: Path, *, requests: int = 2000) -> CheckResult:
    """Linear memory over ``requests`` requests on the in-process host (after a warm-up)."""
    from ..host.plugin import PluginFailed, PluginHost
    from ..host.vm import GuestFailure
    from ..spec import UpstreamAnswer

    name = "linear memory flat"
    started = time.monotonic()
    headers = [(":authority", "filterkit.test"), (":path", "/filterkit-check"), (":method", "GET"),
               (":scheme", "http"), ("x-filterkit-case", "check"), ("x-forwarded-proto", "http"),
               ("x-request-id", "00000000-0000-4000-8000-000000000000")]
    upstream = UpstreamAnswer(200, (("content-type", "text/plain"),), b"ok")
    host = PluginHost(wasm, plugin_config=project.plugin_config_text, root_id=project.root_id, log_level="critical")
    try:
        host.start()
        for _ in range(WARMUP):
            host.http_stream().exchange(headers, b"", upstream)
        size0 = host.vm.memory.data_len(host.vm.store)
        for _ in range(requests):
            host.http_stream().exchange(headers, b"", upstream)
        size1 = host.vm.memory.data_len(host.vm.store)
    except (PluginFailed, GuestFailure) as err:
        return CheckResult(name, False, f"the filter failed on the host: {err}", (), time.monotonic() - started)
    finally:
        try:
            host.shutdown()
        except Exception:  # noqa: BLE001 - a shutdown trap is the shutdown check's business
            pass
    per_request = (size1 - size0) / requests
    # Memory grows by whole pages (and the allocator may take several at once): the figure is exact only
    # to about PAGE / requests bytes per request.
    ok = size1 - size0 <= PAGE or per_request <= LINEAR_LIMIT_PER_REQUEST
    summary = (f"{size0 // 1024} KiB → {size1 // 1024} KiB over {requests} requests: {per_request:.1f} bytes/request")
    return CheckResult(name, ok, summary + f" (±{PAGE / requests:.0f})", () if ok else (
        "linear memory grows with every request: a leak in the filter or its SDK "
        "(e.g. a per-request context never freed)",), time.monotonic() - started,
        {"bytes_per_request": per_request, "before": size0, "after": size1, "requests": requests})

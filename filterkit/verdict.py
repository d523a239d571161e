"""What a runner observed for one case, and the one place where it is judged against the spec.

Runners (in-process host, Envoy) only observe; ``judge`` compares, so both targets fail a case
for the same reason with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import Case, Headers, TextMatch


@dataclass(frozen=True)
class LogRecord:
    level: str  # one of spec.LOG_LEVELS
    message: str


@dataclass(frozen=True)
class HttpMessage:
    """A request as the upstream received it (method/path set) or a response (status set)."""

    headers: Headers = ()
    body: bytes = b""
    method: str = ""
    path: str = ""
    status: int = 0

    def header(self, name: str) -> str | None:
        """All values of ``name`` joined by ',' (as HTTP folds them), None when absent."""
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None


@dataclass(frozen=True)
class Observation:
    """Everything a runner saw for one case."""

    response: HttpMessage | None = None  # None: no response (the filter trapped, the proxy died …)
    upstream_request: HttpMessage | None = None  # None: the upstream was never called
    logs: tuple[LogRecord, ...] = ()
    error: str | None = None  # the filter failed (trap with wasm backtrace, proxy crash …)
    seconds: float = 0.0  # how long the case took on its target
    # The filter's metrics (counters and gauges, by the name the filter defined) after the case;
    # None: the target did not read them.
    metrics: tuple[tuple[str, int], ...] | None = None
    # Why the target did not run the case (e.g. it sets host-only fields on an Envoy target); None: it ran.
    skipped: str | None = None

    def metric(self, name: str) -> int | None:
        return dict(self.metrics or ()).get(name)


@dataclass(frozen=True)
class CaseResult:
    case: Case
    target: str  # "host", "envoy-1.40.0", …
    observation: Observation
    differences: tuple[str, ...] = field(default_factory=tuple)

    @property
    def seconds(self) -> float:
        return self.observation.seconds

    @property
    def passed(self) -> bool:
        return not self.differences

    @property
    def skipped(self) -> str | None:
        """Why the case did not run on this target (counted neither as passed nor as failed by reports)."""
        return self.observation.skipped


def judge(case: Case, target: str, observation: Observation) -> CaseResult:
    return CaseResult(case, target, observation, tuple(_differences(case, observation)))


def _differences(case: Case, obs: Observation) -> list[str]:
    if obs.skipped is not None:
        return []
    if obs.error is not None:
        return [f"filter failed: {obs.error}"]
    out: list[str] = []
    want = case.expect_response
    if want is not None:
        if obs.response is None:
            out.append("response: none was received")
        else:
            if want.status is not None and obs.response.status != want.status:
                out.append(f"response status: expected {want.status}, got {obs.response.status}")
            out += _message_differences("response", want.headers, want.body, obs.response)
    up = case.expect_upstream
    if up is not None:
        got = obs.upstream_request
        if not up.called:
            if got is not None:
                out.append(f"upstream: expected not to be called, but it received {got.method} {got.path}")
        elif got is None:
            out.append("upstream: expected a request, but the upstream was never called")
        else:
            if up.method is not None and got.method != up.method:
                out.append(f"upstream method: expected {up.method}, got {got.method}")
            if up.path is not None:
                _add(out, "upstream path", up.path.mismatch(got.path))
            out += _message_differences("upstream", up.headers, up.body, got)
    for want_log in case.expect_logs:
        lines = [r for r in obs.logs if want_log.level is None or r.level == want_log.level]
        hits = [r for r in lines if want_log.text.mismatch(r.message) is None]
        at = f" at level {want_log.level}" if want_log.level else ""
        if want_log.absent and hits:
            out.append(f"logs: expected no line{at} {want_log.text.describe()}, got {hits[0].message!r}")
        elif not want_log.absent and not hits:
            out.append(f"logs: expected a line{at} {want_log.text.describe()}, got {len(lines)} line(s) "
                       "none matching")
    if case.expect_metrics:
        if obs.metrics is None:
            out.append("metrics: this target did not report the filter's metrics")
        else:
            values = dict(obs.metrics)
            for name, want_metric in case.expect_metrics:
                _add(out, f"metric {name}", want_metric.mismatch(values.get(name)))
    return out


def _message_differences(label: str, headers: tuple[tuple[str, TextMatch], ...], body: TextMatch | None,
                         got: HttpMessage) -> list[str]:
    out: list[str] = []
    for name, match in headers:
        _add(out, f"{label} header {name}", match.mismatch(got.header(name)))
    if body is not None:
        _add(out, f"{label} body", body.mismatch(got.body.decode("utf-8", "replace")))
    return out


def _add(out: list[str], label: str, problem: str | None) -> None:
    if problem is not None:
        out.append(f"{label}: {problem}")

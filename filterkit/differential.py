"""Differential runs (``filterkit test --target all``): the same case on the in-process host and on a real
Envoy must give the same verdict and the same observed exchange; where they do not, the host is not
faithful to Envoy for this filter: a *fidelity failure*, reported apart from ordinary case failures.

What is compared, per case (``compare``):

- the verdict (passed / failed against the spec);
- whether the filter failed (trap, refused plugin): on one target only → fidelity failure; on both → the
  same (Envoy's own answer to a failed filter is not the filter's response, so nothing more is compared);
- the response: status, body, and the headers, without those Envoy (or HTTP) adds itself:
  ``date``, ``server``, ``x-request-id``, every ``x-envoy-*`` header (e.g. ``x-envoy-upstream-service-time``),
  hop-by-hop headers (``connection``, ``keep-alive``, ``transfer-encoding``), and ``content-length`` unless
  both targets have it (Envoy adds ``content-length: 0`` to empty proxied responses; when both have it the
  values must agree);
- the upstream: called or not; if called, method, path, body and request headers, with the same exceptions
  (``x-request-id`` compared by presence only, since its value is random; ``x-envoy-*`` such as
  ``x-envoy-expected-rq-timeout-ms`` ignored).

Header names are compared case-insensitively, values exactly, as multisets (order is not compared).

Metrics: when both targets read the filter's counters and gauges after a case (it expects metrics),
their values must agree.

Not comparable: a case one target skipped (host-only fields such as ``properties`` on Envoy). Once the filter's VM has failed on either target in an earlier case, the targets part
ways by design — the host starts a fresh VM for the next case while Envoy (fail-closed) answers 503
``wasm_fail_stream`` until it is restarted. A later case where either target reports a failure is then
"not comparable" (reported, not counted as a fidelity failure); a later case where both ran cleanly is still
compared.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .verdict import CaseResult, HttpMessage

ENVOY_ADDED = frozenset({"date", "server", "x-request-id", "connection", "keep-alive", "transfer-encoding",
                         "proxy-connection"})
PRESENCE_ONLY = frozenset({"x-request-id"})  # upstream request: random value, compared by presence

SAME, DIFFERS, NOT_COMPARABLE = "same", "differs", "not comparable"


@dataclass(frozen=True)
class Fidelity:
    """The comparison of one case between the host and one Envoy target."""

    case_name: str
    case_line: int
    envoy_target: str
    status: str  # SAME, DIFFERS or NOT_COMPARABLE
    differences: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> bool:
        return self.status == DIFFERS


def _ignored(name: str) -> bool:
    return name in ENVOY_ADDED or name.startswith("x-envoy-")


def _header_differences(label: str, host: HttpMessage, envoy: HttpMessage, *, presence_only=frozenset()) -> list[str]:
    def keep(message: HttpMessage, other: HttpMessage) -> Counter:
        other_names = {k.lower() for k, _ in other.headers}
        kept = Counter()
        for name, value in message.headers:
            name = name.lower()
            if name in presence_only:
                kept[(name, "<present>")] += 1
            elif _ignored(name) or name.startswith(":"):
                continue
            elif name == "content-length" and name not in other_names:
                continue
            else:
                kept[(name, value)] += 1
        return kept

    h, e = keep(host, envoy), keep(envoy, host)
    out = []
    for name in sorted({n for n, _ in (h - e) + (e - h)}):
        hv = [v for (n, v) in sorted(h.elements()) if n == name]
        ev = [v for (n, v) in sorted(e.elements()) if n == name]
        out.append(f"{label} header {name}: host {_values(hv)}, envoy {_values(ev)}")
    return out


def _values(values: list[str]) -> str:
    return "absent" if not values else " , ".join(repr(v) for v in values)


def _metric(value: int | None) -> str:
    return "not defined" if value is None else str(value)


def _short(text: str | None) -> str:
    return (text or "").splitlines()[0][:200] if text else ""


def compare(host: CaseResult, envoy: CaseResult, *, after_vm_failure: bool = False) -> Fidelity:
    """Compare one case's host and Envoy results (see the module docstring for the rules)."""
    base = dict(case_name=host.case.name, case_line=host.case.line, envoy_target=envoy.target)
    h, e = host.observation, envoy.observation
    if h.skipped or e.skipped:
        which, why = ("host", h.skipped) if h.skipped else ("envoy", e.skipped)
        return Fidelity(**base, status=NOT_COMPARABLE, differences=(f"skipped on {which}: {why}",))
    if after_vm_failure and (h.error or e.error):
        why = "the filter's VM failed in an earlier case: the host runs later cases on a fresh VM, Envoy " \
              "keeps the failed one"
        return Fidelity(**base, status=NOT_COMPARABLE,
                        differences=(why + (f" (envoy: {_short(e.error)})" if e.error else "")
                                     + (f" (host: {_short(h.error)})" if h.error else ""),))
    out: list[str] = []
    if host.passed != envoy.passed:
        out.append(f"verdict: host {'passed' if host.passed else 'failed'}, envoy {'passed' if envoy.passed else 'failed'}"
                   + (f" ({(host.differences or envoy.differences)[0].splitlines()[0]})"
                      if (host.differences or envoy.differences) else ""))
    if bool(h.error) != bool(e.error):
        which, text = ("host", h.error) if h.error else ("envoy", e.error)
        out.append(f"the filter failed on {which} only: {_short(text)}")
    elif h.error and e.error:
        return Fidelity(**base, status=DIFFERS if out else SAME, differences=tuple(out))
    hr, er = h.response, e.response
    if (hr is None) != (er is None):
        out.append(f"response: host {'none' if hr is None else hr.status}, envoy {'none' if er is None else er.status}")
    elif hr is not None and er is not None:
        if hr.status != er.status:
            out.append(f"response status: host {hr.status}, envoy {er.status}")
        out += _header_differences("response", hr, er)
        if hr.body != er.body:
            out.append(f"response body: host {hr.body[:100]!r}, envoy {er.body[:100]!r}")
    hu, eu = h.upstream_request, e.upstream_request
    if (hu is None) != (eu is None):
        out.append(f"upstream called: host {'no' if hu is None else 'yes'}, envoy {'no' if eu is None else 'yes'}")
    elif hu is not None and eu is not None:
        if (hu.method, hu.path) != (eu.method, eu.path):
            out.append(f"upstream request: host {hu.method} {hu.path}, envoy {eu.method} {eu.path}")
        out += _header_differences("upstream request", hu, eu, presence_only=PRESENCE_ONLY)
        if hu.body != eu.body:
            out.append(f"upstream request body: host {hu.body[:100]!r}, envoy {eu.body[:100]!r}")
    if h.metrics is not None and e.metrics is not None:
        hm, em = dict(h.metrics), dict(e.metrics)
        for name in sorted(set(hm) | set(em)):
            if hm.get(name) != em.get(name):
                out.append(f"metric {name}: host {_metric(hm.get(name))}, envoy {_metric(em.get(name))}")
    return Fidelity(**base, status=DIFFERS if out else SAME, differences=tuple(out))


def compare_runs(host: tuple[CaseResult, ...], envoy: tuple[CaseResult, ...]) -> tuple[Fidelity, ...]:
    """Compare two runs of the same spec case by case (same order)."""
    out = []
    failed_before = False
    for h, e in zip(host, envoy):
        out.append(compare(h, e, after_vm_failure=failed_before))
        if h.observation.error or e.observation.error:
            failed_before = True
    return tuple(out)

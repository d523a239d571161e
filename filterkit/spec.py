"""The spec file: declarative test cases for a filter, parsed once into dataclasses.

A spec file (default ``tests/spec.yaml`` in a filter project) looks like::

    cases:
      - name: allowed request gets both headers
        config: {...}                 # optional: plugin configuration for this case only
        request: {method: GET, path: /hello, headers: {x-user: alice}, body: ""}
        upstream: {status: 200, headers: {content-type: text/plain}, body: hello}
        expect:
          response:
            status: 200
            headers: {x-filter: demo, x-secret: {absent: true}, x-id: {matches: "^[0-9a-f]+$"}}
            body: hello               # or {contains: ...} / {matches: ...}
          upstream:                   # the request as the upstream received it
            headers: {x-policy: checked}
          # or: upstream: {called: false}
          logs:
            - {level: info, contains: "denied"}
            - {contains: "secret", absent: true}
          metrics: {requests_total: 3, denied_total: {at_least: 1}}   # the filter's metrics after the case

More per-case fields:

- ``http_calls: {cluster: {status: 200, headers: {...}, body: "...", delay_ms: 0}}``: how the cluster
  answers an http call the filter dispatches (``proxy_http_call``); a list gives one answer per call,
  ``reset: true`` a failed connection. Both targets (the Envoy runner routes the cluster to its test upstream).
- ``properties: {source.address: "10.0.0.1:5000", connection.mtls: true, request.time: {$timestamp: ...}}``:
  attribute values the filter reads with ``proxy_get_property`` (``null`` hides one). **Host only**:
  Envoy computes its attributes itself, so the Envoy runner skips such a case (``Case.host_only``).
- ``ticks: N``: before the request, the host's virtual clock advances N tick periods of the plugin,
  firing ``proxy_on_tick`` N times. **Host only** (real Envoy ticks in real time).

Typed property values: ``{$int64: 5}``, ``{$uint64: 5}``, ``{$double: 1.5}``, ``{$bool: true}``,
``{$string: "x"}``, ``{$bytes: "text"}``, ``{$timestamp: "2024-05-01T12:00:00Z" | ns}``,
``{$duration: "250ms" | ns}``; plain YAML values map to string, int64, double, bool, map and list.

The same ``Spec`` object is handed unchanged to the in-process host runner and the Envoy runner.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .yamlfile import Node, load_yaml

LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "critical")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
DEFAULT_AUTHORITY = "filterkit.test"
# Header that tags each request with its case number, so the Envoy runner's upstream and log reader
# can tell cases apart. The host runner sends it too, so a filter sees the same headers on both.
CASE_HEADER = "x-filterkit-case"
# The cluster of the test upstream (the request's route) on both targets; http_calls cannot script it.
UPSTREAM_CLUSTER = "upstream"

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TextMatch:
    """One expectation on a text value (header value, body, log message)."""

    kind: str  # "equals", "contains", "matches", "present", "absent"
    value: str = ""

    def mismatch(self, actual: str | None) -> str | None:
        """None when ``actual`` satisfies this expectation, else a short description of why not."""
        if self.kind == "absent":
            return None if actual is None else f"expected absent, got {actual!r}"
        if actual is None:
            return "expected present, got nothing" if self.kind == "present" else (
                f"expected {self.describe()}, got nothing")
        if self.kind == "present":
            return None
        ok = {
            "equals": lambda: actual == self.value,
            "contains": lambda: self.value in actual,
            "matches": lambda: re.search(self.value, actual) is not None,
        }[self.kind]()
        return None if ok else f"expected {self.describe()}, got {actual!r}"

    def describe(self) -> str:
        if self.kind in ("present", "absent"):
            return self.kind
        verb = {"equals": "", "contains": "containing ", "matches": "matching "}[self.kind]
        return f"{verb}{self.value!r}"


@dataclass(frozen=True)
class Request:
    """The request a case sends downstream into the filter."""

    method: str = "GET"
    path: str = "/"
    headers: Headers = ()
    body: bytes = b""

    @property
    def authority(self) -> str:
        for name, value in self.headers:
            if name == "host":
                return value
        return DEFAULT_AUTHORITY


@dataclass(frozen=True)
class UpstreamAnswer:
    """What the test upstream answers when the request reaches it."""

    status: int = 200
    headers: Headers = ()
    body: bytes = b""


@dataclass(frozen=True)
class ResponseExpectation:
    status: int | None = None
    headers: tuple[tuple[str, TextMatch], ...] = ()
    body: TextMatch | None = None


@dataclass(frozen=True)
class UpstreamExpectation:
    called: bool = True
    method: str | None = None
    path: TextMatch | None = None
    headers: tuple[tuple[str, TextMatch], ...] = ()
    body: TextMatch | None = None


@dataclass(frozen=True)
class LogExpectation:
    text: TextMatch
    level: str | None = None
    absent: bool = False  # True: no log line (at that level) may satisfy ``text``


@dataclass(frozen=True)
class MetricExpectation:
    """The value of one metric (counter or gauge) after a case: ``equals``, ``at_least``, ``at_most``
    or ``absent`` (never defined)."""

    kind: str
    value: int = 0

    def mismatch(self, actual: int | None) -> str | None:
        if self.kind == "absent":
            return None if actual is None else f"expected absent, got {actual}"
        if actual is None:
            return f"expected {self.describe()}, but the filter never defined it"
        ok = {"equals": actual == self.value, "at_least": actual >= self.value,
              "at_most": actual <= self.value}[self.kind]
        return None if ok else f"expected {self.describe()}, got {actual}"

    def describe(self) -> str:
        return {"equals": "{}", "at_least": "at least {}", "at_most": "at most {}", "absent": "absent"}[
            self.kind].format(self.value)


@dataclass(frozen=True)
class TypedValue:
    """A property value with an explicit type (``{$uint64: 5}`` in a spec file): int64, uint64, double,
    bool, string, bytes, timestamp (ns since the epoch), duration (ns)."""

    type: str
    value: Any


@dataclass(frozen=True)
class HttpCallReply:
    """How a cluster answers one http call of the filter (``http_calls`` of a case)."""

    status: int = 200
    headers: Headers = ()
    body: bytes = b""
    delay_ms: int = 0
    reset: bool = False  # the connection fails instead of answering


# Case fields only the in-process host can apply (the Envoy runner must skip such a case, saying why).
HOST_ONLY_FIELDS = ("properties", "ticks")


@dataclass(frozen=True)
class Case:
    number: int  # 1-based position in the spec file
    name: str
    line: int
    request: Request
    upstream: UpstreamAnswer
    # Plugin configuration for this case as the exact bytes the filter gets; None = project default.
    plugin_config: str | None = None
    expect_response: ResponseExpectation | None = None
    expect_upstream: UpstreamExpectation | None = None
    expect_logs: tuple[LogExpectation, ...] = ()
    expect_metrics: tuple[tuple[str, MetricExpectation], ...] = ()
    # property path (dotted) -> value (str, int, float, bool, None = hidden, dict, list, TypedValue)
    properties: tuple[tuple[str, Any], ...] = ()
    http_calls: tuple[tuple[str, tuple[HttpCallReply, ...]], ...] = ()  # cluster -> answers, in call order
    ticks: int = 0

    @property
    def host_only(self) -> tuple[str, ...]:
        """The fields of this case only the in-process host can apply (see ``HOST_ONLY_FIELDS``)."""
        return tuple(name for name in HOST_ONLY_FIELDS if getattr(self, name))

    def request_headers(self) -> Headers:
        """The request headers both runners send, with the case tag and a host header."""
        headers = [(CASE_HEADER, str(self.number))]
        if not any(name == "host" for name, _ in self.request.headers):
            headers.append(("host", DEFAULT_AUTHORITY))
        return self.request.headers + tuple(headers)


@dataclass(frozen=True)
class Spec:
    path: Path
    cases: tuple[Case, ...] = field(default_factory=tuple)

    def effective_config(self, case: Case, default: str) -> str:
        return default if case.plugin_config is None else case.plugin_config


def plugin_config_text(value: Any) -> str:
    """The bytes a filter receives as plugin configuration: a string verbatim, anything else as JSON.

    ``None`` (no configuration) is the empty configuration.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


# --------------------------------------------------------------------------------------------------
# parsing


def load_spec(path: Path) -> Spec:
    """Parse a spec file; raises ``InputError`` (file:line: key: problem) on the first problem."""
    root = load_yaml(path, "spec file")
    top = root.mapping(allowed=("cases",))
    cases_node = top.require("cases", "add a list of test cases under 'cases:'")
    cases = []
    names: dict[str, int] = {}
    for number, node in enumerate(cases_node.sequence(), start=1):
        case = _case(node, number)
        if case.name in names:
            raise node.error(f"case name '{case.name}' is already used on line {names[case.name]}")
        names[case.name] = case.line
        cases.append(case)
    if not cases:
        raise cases_node.error("no cases: add at least one case")
    return Spec(path=path, cases=tuple(cases))


def _case(node: Node, number: int) -> Case:
    m = node.mapping(allowed=("name", "config", "request", "upstream", "expect", "properties", "http_calls",
                              "ticks"))
    name = m.get("name").str() if m.get("name") else f"case {number}"
    config = None
    if "config" in m:
        config = plugin_config_text(m.items["config"].value())
    expect = m.get("expect")
    response = upstream = None
    logs: tuple[LogExpectation, ...] = ()
    metrics: tuple[tuple[str, MetricExpectation], ...] = ()
    if expect is not None:
        e = expect.mapping(allowed=("response", "upstream", "logs", "metrics"))
        response = _response_expectation(e.get("response")) if e.get("response") else None
        upstream = _upstream_expectation(e.get("upstream")) if e.get("upstream") else None
        logs = tuple(_log_expectation(n) for n in e.get("logs").sequence()) if e.get("logs") else ()
        metrics = _metric_expectations(e.get("metrics")) if e.get("metrics") else ()
    return Case(
        number=number,
        name=name,
        line=node.line,
        request=_request(m.get("request")),
        upstream=_upstream_answer(m.get("upstream")),
        plugin_config=config,
        expect_response=response,
        expect_upstream=upstream,
        expect_logs=logs,
        expect_metrics=metrics,
        properties=_properties(m.items.get("properties")),
        http_calls=_http_calls(m.get("http_calls")),
        ticks=m.get("ticks").int(0, 1_000_000) if m.get("ticks") else 0,
    )


def _request(node: Node | None) -> Request:
    if node is None:
        return Request()
    m = node.mapping(allowed=("method", "path", "headers", "body"))
    method = m.get("method").str().upper() if m.get("method") else "GET"
    if method not in HTTP_METHODS:
        raise m.get("method").error(f"'{method}' is not one of: {', '.join(HTTP_METHODS)}")
    path = m.get("path").str() if m.get("path") else "/"
    if not path.startswith("/"):
        raise m.get("path").error(f"'{path}' must start with '/'")
    return Request(method=method, path=path, headers=_headers(m.get("headers")), body=_body(m.get("body")))


def _upstream_answer(node: Node | None) -> UpstreamAnswer:
    if node is None:
        return UpstreamAnswer()
    m = node.mapping(allowed=("status", "headers", "body"))
    status = m.get("status").int(100, 599) if m.get("status") else 200
    return UpstreamAnswer(status=status, headers=_headers(m.get("headers")), body=_body(m.get("body")))


def _headers(node: Node | None) -> Headers:
    """``{name: value}`` or ``{name: [v1, v2]}``; names are lower-cased as HTTP/2 and Envoy do."""
    if node is None:
        return ()
    pairs = []
    for name, value in node.mapping():
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise value.error("not a valid HTTP header name")
        values = value.sequence() if value.is_sequence else [value]
        for v in values:
            text = v.str()
            if "\n" in text or "\r" in text:
                raise v.error("header values cannot contain line breaks")
            pairs.append((name.lower(), text))
    return tuple(pairs)


def _body(node: Node | None) -> bytes:
    return node.str().encode() if node is not None else b""


def _text_match(node: Node, allow_presence: bool) -> TextMatch:
    """A plain string means equals; a mapping names one of equals/contains/matches/present/absent."""
    if not node.is_mapping:
        return TextMatch("equals", node.str())
    kinds = ("equals", "contains", "matches") + (("present", "absent") if allow_presence else ())
    m = node.mapping(allowed=kinds)
    if len(m.items) != 1:
        raise node.error(f"give exactly one of: {', '.join(kinds)}")
    kind, value = next(iter(m))
    if kind in ("present", "absent"):
        if not value.bool():
            raise value.error(f"use '{kind}: true' (for the opposite use '{'absent' if kind == 'present' else 'present'}: true')")
        return TextMatch(kind)
    return TextMatch(kind, _regex(value) if kind == "matches" else value.str())


def _header_expectations(node: Node | None) -> tuple[tuple[str, TextMatch], ...]:
    if node is None:
        return ()
    return tuple((name.lower(), _text_match(value, allow_presence=True)) for name, value in node.mapping())


def _response_expectation(node: Node) -> ResponseExpectation:
    m = node.mapping(allowed=("status", "headers", "body"))
    return ResponseExpectation(
        status=m.get("status").int(100, 599) if m.get("status") else None,
        headers=_header_expectations(m.get("headers")),
        body=_text_match(m.get("body"), allow_presence=False) if m.get("body") else None,
    )


def _upstream_expectation(node: Node) -> UpstreamExpectation:
    m = node.mapping(allowed=("called", "method", "path", "headers", "body"))
    called = m.get("called").bool() if m.get("called") else True
    if not called and len(m.items) > 1:
        raise node.error("'called: false' cannot be combined with expectations on the upstream request")
    return UpstreamExpectation(
        called=called,
        method=m.get("method").str().upper() if m.get("method") else None,
        path=_text_match(m.get("path"), allow_presence=False) if m.get("path") else None,
        headers=_header_expectations(m.get("headers")),
        body=_text_match(m.get("body"), allow_presence=False) if m.get("body") else None,
    )


def _log_expectation(node: Node) -> LogExpectation:
    """A plain string means "some log line contains it"."""
    if not node.is_mapping:
        return LogExpectation(text=TextMatch("contains", node.str()))
    m = node.mapping(allowed=("level", "contains", "matches", "equals", "absent"))
    kinds = [k for k in ("contains", "matches", "equals") if k in m]
    if len(kinds) != 1:
        raise node.error("give exactly one of: contains, matches, equals")
    kind = kinds[0]
    text = _regex(m.items[kind]) if kind == "matches" else m.items[kind].str()
    level = m.get("level").choice(LOG_LEVELS) if m.get("level") else None
    absent = m.get("absent").bool() if m.get("absent") else False
    return LogExpectation(text=TextMatch(kind, text), level=level, absent=absent)


def _metric_expectations(node: Node) -> tuple[tuple[str, MetricExpectation], ...]:
    """``{name: 3}`` (equals) or ``{name: {at_least: 1}}`` / ``{at_most: N}`` / ``{equals: N}`` / ``{absent: true}``."""
    out = []
    for name, value in node.mapping():
        if not value.is_mapping:
            out.append((name, MetricExpectation("equals", value.int(0))))
            continue
        kinds = ("equals", "at_least", "at_most", "absent")
        m = value.mapping(allowed=kinds)
        if len(m.items) != 1:
            raise value.error(f"give exactly one of: {', '.join(kinds)}")
        kind, item = next(iter(m))
        if kind == "absent":
            if not item.bool():
                raise item.error("use 'absent: true' (or expect a value)")
            out.append((name, MetricExpectation("absent")))
        else:
            out.append((name, MetricExpectation(kind, item.int(0))))
    return tuple(out)


PROPERTY_TYPES = ("int64", "uint64", "double", "bool", "string", "bytes", "timestamp", "duration")


def _properties(node: Node | None) -> tuple[tuple[str, Any], ...]:
    if node is None or node.is_null:
        return ()
    out = []
    for path, value in node.mapping():
        if not path or any(not part for part in path.split(".")):
            raise value.error("a property path is dot-separated names, like source.address")
        out.append((path, _property_value(value)))
    return tuple(out)


def _property_value(node: Node) -> Any:
    if node.is_null:
        return None
    if node.is_sequence:
        return tuple(_property_value(n) for n in node.sequence())
    if not node.is_mapping:
        return node.value()
    m = node.mapping()
    typed = [k for k in m.items if k.startswith("$")]
    if not typed:
        return {k: _property_value(v) for k, v in m}
    if len(m.items) != 1:
        raise node.error("a typed value has exactly one key, like {$uint64: 5}")
    kind, item = typed[0][1:], m.items[typed[0]]
    if kind not in PROPERTY_TYPES:
        raise item.error(f"unknown type '${kind}' (one of: {', '.join('$' + t for t in PROPERTY_TYPES)})")
    raw_value = item.value()
    if kind in ("int64", "uint64"):
        return TypedValue(kind, item.int(0 if kind == "uint64" else None))
    if kind == "double":
        if isinstance(raw_value, bool) or not isinstance(raw_value, (int, float)):
            raise item.error("expected a number")
        return TypedValue(kind, float(raw_value))
    if kind == "bool":
        return TypedValue(kind, item.bool())
    if kind in ("string", "bytes"):
        return TypedValue(kind, item.str())
    if kind == "timestamp":
        return TypedValue(kind, _timestamp_ns(item))
    return TypedValue(kind, _duration_ns(item))


def _timestamp_ns(node: Node) -> int:
    value = node.value()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    else:
        try:
            moment = datetime.datetime.fromisoformat(node.str().replace("Z", "+00:00"))
        except ValueError:
            raise node.error("expected nanoseconds since the epoch or a time like 2024-05-01T12:00:00Z") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _duration_ns(node: Node) -> int:
    value = node.value()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|ms|s|m|h)\s*", node.str())
    if not match:
        raise node.error("expected nanoseconds or a duration like 250ms, 1.5s, 2m")
    scale = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
             "h": 3_600_000_000_000}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _http_calls(node: Node | None) -> tuple[tuple[str, tuple[HttpCallReply, ...]], ...]:
    if node is None:
        return ()
    out = []
    for cluster, value in node.mapping():
        if cluster == UPSTREAM_CLUSTER:
            raise value.error(f"'{UPSTREAM_CLUSTER}' is the cluster of the test upstream (answered by the case's "
                              "'upstream:'); give the cluster your filter calls another name")
        replies = value.sequence() if value.is_sequence else [value]
        if not replies:
            raise value.error("give at least one answer")
        out.append((cluster, tuple(_http_call_reply(r) for r in replies)))
    return tuple(out)


def _http_call_reply(node: Node) -> HttpCallReply:
    m = node.mapping(allowed=("status", "headers", "body", "delay_ms", "reset"))
    reset = m.get("reset").bool() if m.get("reset") else False
    if reset and any(k in m for k in ("status", "headers", "body")):
        raise node.error("'reset: true' cannot be combined with status, headers or body")
    return HttpCallReply(status=m.get("status").int(100, 599) if m.get("status") else 200,
                         headers=_headers(m.get("headers")), body=_body(m.get("body")),
                         delay_ms=m.get("delay_ms").int(0, 3_600_000) if m.get("delay_ms") else 0, reset=reset)


def _regex(node: Node) -> str:
    text = node.str()
    try:
        re.compile(text)
    except re.error as err:
        raise node.error(f"invalid regular expression: {err}") from None
    return text

from pathlib import Path

import pytest

from filterkit.errors import InputError
from filterkit.spec import CASE_HEADER, TextMatch, load_spec
from filterkit.verdict import HttpMessage, LogRecord, Observation, judge

SPEC = """\
cases:
  - name: allowed
    request: {method: post, path: /hello, headers: {X-User: alice, x-multi: [a, b]}, body: hi}
    upstream: {status: 201, headers: {content-type: text/plain}, body: hello}
    expect:
      response:
        status: 201
        headers: {x-filter: demo, x-secret: {absent: true}, x-id: {matches: "^[0-9]+$"}}
        body: {contains: ell}
      upstream: {method: POST, path: /hello, headers: {x-policy: checked}, body: hi}
      logs:
        - {level: info, contains: allowed}
        - {contains: secret, absent: true}
  - name: denied
    config: {deny: [{header: x-block}]}
    request: {headers: {x-block: "1"}}
    expect:
      response: {status: 403}
      upstream: {called: false}
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return load_spec(path)


def test_parses_cases(tmp_path):
    spec = load(tmp_path, SPEC)
    allowed, denied = spec.cases
    assert allowed.request.method == "POST"
    assert allowed.request.headers == (("x-user", "alice"), ("x-multi", "a"), ("x-multi", "b"))
    assert allowed.request.body == b"hi"
    assert allowed.upstream.status == 201
    assert allowed.plugin_config is None
    assert denied.plugin_config == '{"deny":[{"header":"x-block"}]}'
    assert denied.expect_upstream.called is False
    assert denied.line == 14
    assert (CASE_HEADER, "2") in denied.request_headers()
    assert ("host", "filterkit.test") in denied.request_headers()
    assert spec.effective_config(allowed, "default") == "default"


def good_observation() -> Observation:
    return Observation(
        response=HttpMessage(status=201, headers=(("x-filter", "demo"), ("x-id", "42")), body=b"hello"),
        upstream_request=HttpMessage(method="POST", path="/hello", headers=(("x-policy", "checked"),), body=b"hi"),
        logs=(LogRecord("info", "request allowed"),),
    )


def test_judge_passes_matching_observation(tmp_path):
    case = load(tmp_path, SPEC).cases[0]
    assert judge(case, "host", good_observation()).differences == ()


def test_judge_names_every_difference(tmp_path):
    case = load(tmp_path, SPEC).cases[0]
    obs = Observation(
        response=HttpMessage(status=200, headers=(("x-secret", "s"), ("x-id", "abc")), body=b"nope"),
        upstream_request=None,
        logs=(LogRecord("debug", "allowed"), LogRecord("info", "secret is 42")),
    )
    diffs = judge(case, "host", obs).differences
    assert diffs == (
        "response status: expected 201, got 200",
        "response header x-filter: expected 'demo', got nothing",
        "response header x-secret: expected absent, got 's'",
        "response header x-id: expected matching '^[0-9]+$', got 'abc'",
        "response body: expected containing 'ell', got 'nope'",
        "upstream: expected a request, but the upstream was never called",
        "logs: expected a line at level info containing 'allowed', got 1 line(s) none matching",
        "logs: expected no line containing 'secret', got 'secret is 42'",
    )


def test_judge_reports_filter_failure(tmp_path):
    case = load(tmp_path, SPEC).cases[1]
    result = judge(case, "envoy", Observation(error="wasm trap: unreachable"))
    assert not result.passed
    assert result.differences == ("filter failed: wasm trap: unreachable",)


def test_upstream_called_when_it_should_not_be(tmp_path):
    case = load(tmp_path, SPEC).cases[1]
    obs = Observation(response=HttpMessage(status=403), upstream_request=HttpMessage(method="GET", path="/"))
    assert judge(case, "host", obs).differences == ("upstream: expected not to be called, but it received GET /",)


@pytest.mark.parametrize("kind, value, actual, ok", [
    ("equals", "a", "a", True), ("equals", "a", "b", False), ("contains", "b", "abc", True),
    ("matches", "^a.c$", "abc", True), ("matches", "^b", "abc", False), ("present", "", "", True),
    ("present", "", None, False), ("absent", "", None, True), ("absent", "", "x", False),
])
def test_text_match(kind, value, actual, ok):
    assert (TextMatch(kind, value).mismatch(actual) is None) is ok


@pytest.mark.parametrize("text, message", [
    ("cases: []\n", "spec.yaml:1: cases: no cases"),
    ("case: []\n", "spec.yaml:1: case: unknown key (did you mean 'cases'?)"),
    ("cases:\n  - request: {method: FETCH}\n", ":2: cases[0].request.method: 'FETCH' is not one of"),
    ("cases:\n  - request: {path: hello}\n", "cases[0].request.path: 'hello' must start with '/'"),
    ("cases:\n  - upstream: {status: 700}\n", "cases[0].upstream.status: 700 is out of range"),
    ("cases:\n  - expect: {response: {status: ok}}\n", "cases[0].expect.response.status: expected a whole number"),
    ("cases:\n  - expect:\n      response:\n        headers: {x: {matches: '('}}\n",
     ":4: cases[0].expect.response.headers.x.matches: invalid regular expression"),
    ("cases:\n  - expect: {response: {headers: {x: {present: true, absent: true}}}}\n", "give exactly one of"),
    ("cases:\n  - expect: {upstream: {called: false, headers: {a: b}}}\n", "'called: false' cannot be combined"),
    ("cases:\n  - expect: {logs: [{level: loud, contains: x}]}\n", "'loud' is not one of: trace, debug"),
    ("cases:\n  - name: a\n  - name: a\n", ":3: cases[1]: case name 'a' is already used on line 2"),
    ("cases:\n  - request: {headers: {'bad header': x}}\n", "not a valid HTTP header name"),
    ("cases:\n  - exepct: {}\n", "cases[0].exepct: unknown key (did you mean 'expect'?)"),
    ("cases:\n - a: [\n", "invalid YAML"),
])
def test_bad_spec_gives_one_located_line(tmp_path, text, message):
    with pytest.raises(InputError) as err:
        load(tmp_path, text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)

"""The in-process proxy-wasm host (filterkit.host) against small WAT filters with exact expectations,
plus the real AssemblyScript template filter. Uses filterkit's own pytest plugin (``filterkit_host``).
See also test_host_conformance.py (every host function), test_host_spec.py (spec fields on the host),
test_host_vs_envoy.py (the same module and expectations on a real Envoy)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import wasmtime

from filterkit.host import (
    Action, HostRun, local_reply_headers, parse_pairs, request_headers, run_spec, serialize_pairs,
)
from filterkit.host.state import LocalResponse
# The plugin's fixtures; when filterkit is installed, the pytest11 entry point registers them anyway.
from filterkit.pytest_plugin import filterkit_host  # noqa: F401
from filterkit.spec import CASE_HEADER, Case, Request, Spec, UpstreamAnswer
from filterkit.verdict import LogRecord

from conftest import run_project_pytest

FIXTURES = Path(__file__).parent / "fixtures" / "host"
UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


@pytest.fixture(scope="module")
def filter_wasm(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("host") / "filter.wasm"
    path.write_bytes(wasmtime.wat2wasm((FIXTURES / "filter.wat").read_text()))
    return path


def case(number: int, path: str = "/", *, method: str = "GET", body: bytes = b"", config: str | None = None,
         headers=(), upstream: UpstreamAnswer | None = None) -> Case:
    return Case(number=number, name=f"case {number}", line=number, request=Request(method, path, tuple(headers), body),
                upstream=upstream or UpstreamAnswer(200, (("content-type", "text/plain"),), b"hello"),
                plugin_config=config)


def run(wasm: Path, *cases: Case, default_config: str = "") -> HostRun:
    return run_spec(Spec(Path("spec.yaml"), tuple(cases)), wasm, default_config=default_config, root_id="demo")


def test_request_headers_seen_changed_and_forwarded(filter_wasm):
    result = run(filter_wasm, case(1, "/hello?x=1", headers=[("x-user", "alice")]), default_config="cfg-A")
    obs = result.observations[0]
    assert obs.error is None
    up = obs.upstream_request
    assert (up.method, up.path, up.body) == ("GET", "/hello?x=1", b"")
    names = [k for k, _ in up.headers]
    assert names == ["host", "x-user", CASE_HEADER, "x-forwarded-proto", "x-request-id", "x-added"]
    assert up.header("host") == "filterkit.test"
    assert up.header("x-added") == "cfg-A"
    assert up.header(CASE_HEADER) == "1"
    assert up.header("x-forwarded-proto") == "http"
    assert re.match(UUID, up.header("x-request-id"))
    assert obs.response.status == 200
    assert obs.response.headers == (("content-type", "text/plain"), ("content-length", "5"), ("x-resp", "1"))
    assert obs.response.body == b"hello"
    # request.path property, then one line per level, then WASI stdout (info) and stderr (error)
    assert obs.logs == (LogRecord("info", "/hello?x=1"), LogRecord("trace", "trace line"),
                        LogRecord("debug", "debug line"), LogRecord("warn", "warn line"),
                        LogRecord("critical", "critical line"), LogRecord("info", "stdout line"),
                        LogRecord("error", "stderr line"))
    # configure-time logs are plugin-level, not the case's
    assert result.plugin_logs == [LogRecord("info", "demo"), LogRecord("info", "cfg-A")]
    assert result.vm_errors == [] and result.vm_starts == 1


def test_filter_sees_envoy_style_request_headers(filter_wasm, filterkit_host):
    headers = request_headers(case(3, "/pairs", method="POST", body=b"abc", headers=[("host", "example.com")]))
    assert headers[:4] == [(":authority", "example.com"), (":path", "/pairs"), (":method", "POST"),
                           (":scheme", "http")]
    assert [k for k, _ in headers[4:]] == [CASE_HEADER, "content-length", "x-forwarded-proto", "x-request-id"]
    host = filterkit_host(filter_wasm, root_id="demo")
    stream = host.http_stream()
    assert stream.request_headers(headers, end_of_stream=False) == Action.CONTINUE
    # the guest got exactly Envoy's serialisation of the map
    assert stream.logs[-1].message.encode() == serialize_pairs(headers)


def test_pairs_serialization_is_envoys():
    data = serialize_pairs([("a", "1"), ("bc", "")])
    assert data == b"\x02\0\0\0" b"\x01\0\0\0\x01\0\0\0" b"\x02\0\0\0\0\0\0\0" b"a\x001\x00bc\x00\x00"
    assert parse_pairs(data) == [("a", "1"), ("bc", "")]
    assert parse_pairs(b"") == []


def test_local_response_skips_upstream_and_goes_through_response_callbacks(filter_wasm):
    obs = run(filter_wasm, case(1, "/deny")).observations[0]
    assert obs.error is None
    assert obs.upstream_request is None
    assert obs.response.status == 403
    # additional headers, then what Envoy adds for a body, then what on_response_headers added
    assert obs.response.headers == (("x-deny", "yes"), ("content-length", "9"), ("content-type", "text/plain"),
                                    ("x-resp", "1"))
    assert obs.response.body == b"forbidden"


def test_local_reply_headers_like_envoy():
    assert local_reply_headers(LocalResponse(204, "", b"", [("content-length", "3")], -1)) == [(":status", "204")]
    assert local_reply_headers(LocalResponse(400, "", b"x", [("content-type", "application/json")], -1)) == [
        (":status", "400"), ("content-type", "application/json"), ("content-length", "1")]


def test_request_body_is_changed_by_the_filter(filter_wasm):
    obs = run(filter_wasm, case(1, "/upload", method="POST", body=b"abc")).observations[0]
    assert obs.error is None
    # Envoy delivers "abc" then an empty end-of-stream chunk; the filter appends "!" to each, and the
    # upstream reads content-length (3) bytes
    assert obs.upstream_request.body == b"abc"
    assert obs.upstream_request.header("content-length") == "3"


def test_trap_reports_backtrace_and_next_case_gets_fresh_vm(filter_wasm):
    result = run(filter_wasm, case(1, "/trap"), case(2, "/ok"))
    first, second = result.observations
    assert first.response is None and first.upstream_request is None
    assert first.error.startswith("proxy_on_request_headers: wasm trap: wasm `unreachable` instruction executed")
    frames = first.error.split("wasm backtrace:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in frames] == ["deeper", "explode", "proxy_on_request_headers"]
    assert second.error is None and second.response.status == 200
    assert result.vm_starts == 2


def test_paused_stream_is_reported(filter_wasm):
    obs = run(filter_wasm, case(1, "/pause")).observations[0]
    assert obs.upstream_request is None and obs.response is None
    assert obs.error.startswith("stream paused and never resumed: proxy_on_request_headers returned STOP_ITERATION")


def test_configure_false_fails_the_case_like_envoy(filter_wasm):
    result = run(filter_wasm, case(1, "/a", config="bad"), case(2, "/b"))
    bad, good = result.observations
    assert bad.error == ("plugin failed to start: proxy_on_configure returned false for the plugin configuration "
                         "'bad' (Envoy rejects the filter configuration)")
    assert good.error is None and good.upstream_request.header("x-added") == "none"


def test_per_case_config_creates_a_new_root_context_on_the_same_vm(filter_wasm):
    result = run(filter_wasm, case(1, "/a"), case(2, "/b", config="cfg-B"), case(3, "/c"), default_config="cfg-A")
    assert [o.upstream_request.header("x-added") for o in result.observations] == ["cfg-A", "cfg-B", "cfg-A"]
    assert result.vm_starts == 1
    assert [r.message for r in result.plugin_logs] == ["demo", "cfg-A", "demo", "cfg-B", "demo", "cfg-A"]


def test_trap_at_shutdown_is_reported(filter_wasm):
    result = run(filter_wasm, case(1, "/a"), default_config="trap-at-exit")
    assert result.observations[0].error is None
    assert len(result.vm_errors) == 1
    assert result.vm_errors[0].startswith("proxy_on_done: wasm trap: wasm `unreachable` instruction executed")
    assert "deeper" in result.vm_errors[0]


def test_unimplemented_import_answers_12_and_is_reported_once(filter_wasm):
    result = run(filter_wasm, case(1, "/grpc"), case(2, "/grpc"))
    assert [o.logs[-1].message for o in result.observations] == ["unimplemented ok"] * 2
    assert list(result.unimplemented) == ["env.proxy_future_call"]
    assert result.unimplemented == {"env.proxy_future_call": "not provided by this host"}


def test_log_level_filters_like_envoy(filter_wasm, filterkit_host):
    host = filterkit_host(filter_wasm, root_id="demo", log_level="warn")
    stream = host.http_stream()
    stream.request_headers([(":path", "/x")], end_of_stream=True)
    assert [r.level for r in stream.logs] == ["warn", "critical", "error"]


def test_header_map_api(filter_wasm, filterkit_host):
    host = filterkit_host(filter_wasm, config="v", root_id="demo")
    stream = host.http_stream()
    assert stream.request_headers([(":path", "/x"), ("X-Mixed", "1")]) == Action.CONTINUE
    assert stream.request_header_map.pairs == [(":path", "/x"), ("x-mixed", "1"), ("x-added", "v")]
    stream.finish()
    assert host.shutdown() == []


def test_real_assemblyscript_filter_with_its_sdk_fixes(assemblyscript_project):
    """The template's filter (gcore SDK + sdk-fixes.ts): logs at real levels, and replacing its
    configuration retires the old root context without the SDK's trap in proxy_on_done."""
    wasm = assemblyscript_project / "build" / "policy.wasm"
    deny = '{"deny": [{"name": "no-admin", "path_prefix": "/admin"}]}'
    result = run_spec(Spec(Path("spec.yaml"), (case(1, "/"), case(2, "/admin/x", config=deny), case(3, "/"))),
                      wasm, default_config="", root_id="policy", retire_old_roots=True)
    allowed, denied, again = result.observations
    assert all(o.error is None for o in result.observations), [o.error for o in result.observations]
    assert allowed.upstream_request.header("x-policy-checked") == "policy"
    assert allowed.response.header("x-filter") == "policy"
    assert denied.upstream_request is None
    assert (denied.response.status, denied.response.header("x-policy-rule")) == (403, "no-admin")
    assert any(r.level == "info" and "denied GET /admin/x" in r.message for r in denied.logs)
    assert any(r.level == "debug" and "allowed GET /" in r.message for r in again.logs)
    assert result.vm_errors == []
    assert result.vm_starts == 1


def test_side_by_side_configs_keep_their_root_contexts(filter_wasm):
    cases = (case(1, "/a"), case(2, "/b", config="cfg-B"), case(3, "/c"), case(4, "/d", config="cfg-B"))
    result = run_spec(Spec(Path("spec.yaml"), cases), filter_wasm, default_config="cfg-A", root_id="demo",
                      retire_old_roots=False)
    # the WAT filter keeps its configuration in one VM-wide global, so the last *configured* root wins:
    # case 3 reuses the cfg-A root context without configuring it again
    assert [o.upstream_request.header("x-added") for o in result.observations] == ["cfg-A", "cfg-B", "cfg-B", "cfg-B"]
    # each configuration was configured once; both roots retire at shutdown without error
    assert [r.message for r in result.plugin_logs] == ["demo", "cfg-A", "demo", "cfg-B"]
    assert result.vm_errors == []


def test_generated_project_runs_its_pytest_tests_with_the_plugin(assemblyscript_project):
    """templates/common/tests/test_filter.py, as a user runs it: plain pytest in the project."""
    done = run_project_pytest(assemblyscript_project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 passed" in done.stdout

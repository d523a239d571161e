"""Conformance of the in-process host, host function by host function, through real wasm modules: the
probe filter (tests/fixtures/host/probe.py, WAT) logs what it observes and the tests assert those
values and what the filter produced. Values follow Envoy (checked against a real Envoy for the paths in
test_host_vs_envoy.py)."""

from __future__ import annotations

import http.server
import importlib.util
import struct
import threading
import zlib
from pathlib import Path

import pytest
import wasmtime

from filterkit.host import (
    Action, HttpCallAnswer, PeerType, PluginFailed, PluginHost, SharedState, StreamType, Typed,
    VirtualClock, WasmResult, run_spec,
)
from filterkit.host import cache
from filterkit.host.vm import compiled_module, forget_compiled_modules
from filterkit.pytest_plugin import filterkit_host  # noqa: F401
from filterkit.spec import Case, Request, Spec, UpstreamAnswer

_spec = importlib.util.spec_from_file_location("probe", Path(__file__).parent / "fixtures" / "host" / "probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

START = 1_700_000_000_000_000_000  # the virtual clock's start (2023-11-14T22:13:20Z)
UPSTREAM = UpstreamAnswer(200, (("content-type", "text/plain"),), b"hello")


@pytest.fixture(scope="module")
def probe_wasm() -> bytes:
    return probe.probe_wasm()


@pytest.fixture
def host(filterkit_host, probe_wasm):
    return filterkit_host(probe_wasm, root_id="probe", vm_id="filterkit", plugin_name="probe-plugin",
                          clock=VirtualClock(START))


def headers(path: str = "/", method: str = "GET", *extra: tuple[str, str], body: bytes = b"") -> list:
    pairs = [(":authority", "filterkit.test"), (":path", path), (":method", method), (":scheme", "http"),
             ("x-filterkit-case", "7")]
    if body:
        pairs.append(("content-length", str(len(body))))
    return pairs + list(extra) + [("x-request-id", "00000000-0000-4000-8000-000000000000")]


def observed(logs) -> dict[str, list[str]]:
    """label -> values, in order ("=hex" lines; "!code" lines give "!<code>")."""
    out: dict[str, list[str]] = {}
    for record in logs:
        message = record.message if hasattr(record, "message") else record
        for sep in ("=", "!"):
            if sep in message:
                label, value = message.split(sep, 1)
                out.setdefault(label, []).append(value if sep == "=" else "!" + value)
                break
    return out


def hexs(text: str) -> str:
    return text.encode().hex()


def i64(value: int) -> str:
    return struct.pack("<q", value).hex()


def u32(value: int) -> str:
    return struct.pack("<I", value).hex()


# -- properties ---------------------------------------------------------------------------------


def test_request_properties_with_envoys_encodings(host):
    obs = host.http_stream().exchange(headers("/a/b?x=1#frag", "POST", body=b"abc"), b"abc", UPSTREAM)
    assert obs.error is None
    seen = {k: v[0] for k, v in observed(obs.logs).items()}
    assert seen["request.path"] == hexs("/a/b?x=1#frag")
    assert seen["request.url_path"] == hexs("/a/b")
    assert seen["request.query"] == hexs("x=1")  # without the fragment
    assert seen["request.host"] == hexs("filterkit.test")
    assert seen["request.method"] == hexs("POST")
    assert seen["request.scheme"] == hexs("http")
    assert seen["request.protocol"] == hexs("HTTP/1.1")
    assert seen["request.headers.x-filterkit-case"] == hexs("7")
    assert seen["request.size"] == i64(3)  # int64 little endian, from content-length
    assert seen["request.time"] == i64(START)  # timestamp: ns since the epoch, from the virtual clock
    assert (seen["plugin_root_id"], seen["plugin_name"], seen["plugin_vm_id"]) == (
        hexs("probe"), hexs("probe-plugin"), hexs("filterkit"))
    assert (seen["xds.cluster_name"], seen["xds.route_name"], seen["xds.virtual_host_name"]) == (
        hexs("upstream"), "", hexs("all"))
    assert seen["connection.mtls"] == "00"  # bool: one byte
    assert seen["connection.requested_server_name"] == ""
    assert seen["xds.listener_direction"] == i64(0)
    assert seen["upstream.request_attempt_count"] == struct.pack("<Q", 0).hex()  # uint64
    assert bytes.fromhex(seen["source.address"]).decode().startswith("127.0.0.1:")
    assert seen["connection_id"] == struct.pack("<Q", 1).hex()
    # not attributes of Envoy 1.40 (moved under xds.*), and never set: NotFound (1)
    assert (seen["node"], seen["cluster_name"], seen["custom.prop"]) == ("!1", "!1", "!1")


def test_response_and_access_log_phase_properties(host):
    obs = host.http_stream().exchange(headers("/r"), b"", UpstreamAnswer(201, (), b"hello"))
    seen = observed(obs.logs)
    assert seen["response.code"][0] == i64(201)
    assert seen["response.code_details"][0] == hexs("via_upstream")
    assert seen["response.flags"][0] == i64(0)
    assert seen["response.size"][0] == i64(0)  # nothing sent yet while the response headers are filtered
    # the request headers are gone once they passed (Envoy): property NotFound, header map BadArgument
    assert seen["request.path"][1] == "!1"
    assert seen["req-in-resp"] == [u32(WasmResult.BAD_ARGUMENT)]
    assert seen["upstream.request_attempt_count"][1] == struct.pack("<Q", 1).hex()
    # access log phase: request and response readable again; the body bytes sent counted ("hello" + "#")
    assert seen["request.path"][2] == hexs("/r")
    assert seen["log-path"] == [hexs("/r")]
    assert seen["response.code"][1] == i64(201)
    assert seen["response.size"][1] == i64(6)
    assert seen["request.duration"] == [i64(0)]  # the virtual clock did not move
    assert obs.response.body == b"hello"  # the client reads content-length (5) bytes; "#" went after it


def test_property_overrides_per_host_and_per_stream(filterkit_host, probe_wasm):
    host = filterkit_host(probe_wasm, root_id="probe", properties={
        "custom.prop": "host-wide", "source.address": "10.1.2.3:4567", "node": {"id": "n1"},
        "connection.mtls": True, "request.size": Typed("uint64", 9), "xds.cluster_name": None})
    seen = {k: v[0] for k, v in observed(host.http_stream().exchange(headers("/"), b"", UPSTREAM).logs).items()}
    assert seen["custom.prop"] == hexs("host-wide")
    assert seen["source.address"] == hexs("10.1.2.3:4567")
    assert seen["connection.mtls"] == "01"
    assert seen["request.size"] == struct.pack("<Q", 9).hex()
    assert seen["xds.cluster_name"] == "!1"  # hidden
    assert seen["node"] == "0100000002000000020000006964006e3100"  # a map: Envoy's pairs serialization
    stream = host.http_stream(properties={"custom.prop": 42})
    seen = {k: v[0] for k, v in observed(stream.exchange(headers("/"), b"", UPSTREAM).logs).items()}
    assert seen["custom.prop"] == i64(42)


def test_set_property_is_stream_filter_state(host):
    seen = observed(host.http_stream().exchange(headers("/set"), b"", UPSTREAM).logs)
    assert seen["set-result"] == [u32(0)] and seen["get-result"] == [u32(0)]
    assert seen["probe.state"] == [hexs("v1")]
    # the next stream does not see it
    seen = observed(host.http_stream().exchange(headers("/"), b"", UPSTREAM).logs)
    assert "probe.state" not in seen


def test_xds_node_is_a_serialized_node_message(filterkit_host, probe_wasm):
    host = filterkit_host(probe_wasm, root_id="probe", node={"id": "sidecar~1", "cluster": "c"})
    ctx = host.http_stream().ctx
    node = host.get_property(ctx, ("xds", "node"))
    assert node == b"\x0a\x09sidecar~1\x12\x01c\x32\x05envoy"  # id=1, cluster=2, user_agent_name=6
    assert host.get_property(ctx, ("xds", "node", "id")) == b"sidecar~1"
    assert host.get_property(host.root, ("xds", "node", "cluster")) == b"c"  # also from the root context
    assert host.get_property(host.root, ("request", "path")) is None  # no stream info there


# -- headers, bodies, local responses ---------------------------------------------------------


def test_header_map_changes_in_envoys_order(host):
    obs = host.http_stream().exchange(headers("/h", "GET", ("x-replace", "0"), ("x-remove", "1"), ("x-keep", "k")),
                                      b"", UPSTREAM)
    up = obs.upstream_request
    # replace = remove + add at the end (Envoy's setCopy); add appends; remove drops every value
    assert [k for k, _ in up.headers] == ["host", "x-filterkit-case", "x-keep", "x-request-id", "x-probe",
                                          "x-replace"]
    assert up.header("x-replace") == "replaced" and up.header("x-probe") == "req"
    assert obs.response.header("x-probe-resp") == "1"


def test_bodies_arrive_like_envoys_http1_codec(host):
    body = b"abc"
    obs = host.http_stream().exchange(headers("/b", "POST", body=body), body, UPSTREAM)
    seen = observed(obs.logs)
    # the data, then an empty end-of-stream chunk: the probe saw both
    assert seen["req-body"] == [hexs("abc"), ""]
    # it wrapped each chunk in <>: "<abc>" then "<>", and the upstream read content-length (3) bytes
    assert obs.upstream_request.body == b"<ab"


def test_buffered_body_and_trailers_through_the_api(host):
    stream = host.http_stream()
    assert stream.request_headers(headers("/b", "POST"), end_of_stream=False) == Action.CONTINUE
    assert stream.request_body(b"xy", end_of_stream=False) == Action.CONTINUE
    assert stream.request_body_data == b"<xy>"  # what passed on after the probe wrapped it
    assert stream.request_trailers([("grpc-status", "0")]) == Action.CONTINUE
    assert stream.request_trailer_map.pairs == [("grpc-status", "0")]
    assert stream.response_headers([(":status", "200")], end_of_stream=False) == Action.CONTINUE
    assert stream.response_header_map.get("x-probe-resp") == "1"
    assert stream.response_body(b"ok", end_of_stream=True) == Action.CONTINUE
    stream.finish()
    assert observed(stream.logs)["log-path"] == [hexs("/b")]


def test_local_response_goes_through_the_response_callbacks(host):
    obs = host.http_stream().exchange(headers("/deny"), b"", UPSTREAM)
    assert obs.upstream_request is None
    assert obs.response.status == 403
    assert obs.response.headers == (("x-probe-deny", "yes"), ("content-length", "15"),
                                    ("content-type", "text/plain"), ("x-probe-resp", "1"))
    assert obs.response.body == b"denied by probe"
    seen = observed(obs.logs)
    assert seen["response.code_details"][0] == hexs("probe_denied")  # Envoy replaces spaces in details
    assert seen["response.code"][0] == i64(403)


def test_close_stream_resets_it(host):
    obs = host.http_stream().exchange(headers("/close"), b"", UPSTREAM)
    assert obs.response is None and obs.upstream_request is None and obs.error is None
    assert observed(obs.logs)["close-result"] == [u32(0)]


def test_paused_stream_is_reported(host):
    obs = host.http_stream().exchange(headers("/pause"), b"", UPSTREAM)
    assert obs.error.startswith("stream paused and never resumed: proxy_on_request_headers returned STOP_ITERATION")


# -- http calls -----------------------------------------------------------------------------------


def test_http_call_scripted_answer_resumes_the_stream(filterkit_host, probe_wasm):
    host = filterkit_host(probe_wasm, root_id="probe", http_answers={
        "probe_cluster": HttpCallAnswer(201, (("x-a", "b"),), b"granted")})
    obs = host.http_stream().exchange(headers("/call"), b"", UPSTREAM)
    assert obs.error is None
    seen = observed(obs.logs)
    assert seen["call-result"] == [u32(0)]
    assert seen["call-status"] == [hexs("201")]
    assert seen["call-body"] == [hexs("granted")]
    assert obs.upstream_request.header("x-call-status") == "201"
    call = host.http_call_log[0]
    assert (call.upstream, call.method, call.path, call.authority, call.timeout_ms) == (
        "probe_cluster", "GET", "/check", "auth", 5000)
    assert call.answer.status == 201 and host.http_calls == {}


def test_http_call_answer_after_a_delay_and_timeouts_in_virtual_time(filterkit_host, probe_wasm):
    host = filterkit_host(probe_wasm, root_id="probe", clock=VirtualClock(START), http_answers={
        "probe_cluster": [HttpCallAnswer(200, (), b"late", delay_ms=1500), HttpCallAnswer(200, delay_ms=9000)]})
    obs = host.http_stream().exchange(headers("/call"), b"", UPSTREAM)
    assert observed(obs.logs)["call-body"] == [hexs("late")]
    assert host.now_ns == START + 1_500_000_000  # the host waited for the answer in virtual time
    obs = host.http_stream().exchange(headers("/call"), b"", UPSTREAM)  # 9 s > the call's 5 s timeout
    seen = observed(obs.logs)
    assert seen["call-status"] == [hexs("504")] and seen["call-body"] == [hexs("upstream request timeout")]


def test_http_call_manual_answer_and_failure(filterkit_host, probe_wasm):
    host = filterkit_host(probe_wasm, root_id="probe")
    stream = host.http_stream()
    assert stream.request_headers(headers("/call")) == Action.STOP_ITERATION
    [token] = host.http_calls
    host.respond_http_call(token, status=200, headers=[("x", "y")], body=b"hi")
    assert stream.ctx.continue_requested[StreamType.REQUEST]
    assert stream.request_header_map.get("x-call-status") == "200"
    stream2 = host.http_stream()
    stream2.request_headers(headers("/call"))
    [token] = host.http_calls
    host.fail_http_call(token)  # Envoy: 0 headers, proxy_get_status = (11, "reset")
    # outside an exchange, root-context lines are the plugin's
    assert observed(host.plugin_logs)["call-status"] == [hexs("200"), ""]


def test_http_call_to_an_unknown_cluster_is_refused_like_envoy(filterkit_host, probe_wasm):
    host = filterkit_host(probe_wasm, root_id="probe", clusters={"upstream"})
    obs = host.http_stream().exchange(headers("/call"), b"", UPSTREAM)
    assert observed(obs.logs)["call-result"] == [u32(WasmResult.BAD_ARGUMENT)]
    assert obs.error.startswith("stream paused and never resumed")


def test_http_call_to_a_real_upstream(filterkit_host, probe_wasm):
    seen_requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen_requests.append((self.path, self.headers.get("host")))
            self.send_response(202)
            self.send_header("content-length", "4")
            self.end_headers()
            self.wfile.write(b"real")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        host = filterkit_host(probe_wasm, root_id="probe",
                              http_upstreams={"probe_cluster": f"http://127.0.0.1:{server.server_port}"})
        obs = host.http_stream().exchange(headers("/call"), b"", UPSTREAM)
    finally:
        server.shutdown()
        server.server_close()
    assert seen_requests == [("/check", "auth")]
    seen = observed(obs.logs)
    assert seen["call-status"] == [hexs("202")] and seen["call-body"] == [hexs("real")]


def test_grpc_calls_close_with_unimplemented(host):
    obs = host.http_stream().exchange(headers("/grpc"), b"", UPSTREAM)
    seen = observed(obs.logs)
    assert seen["grpc-result"] == [u32(0)]
    assert seen["grpc-close"] == [u32(12)]
    assert "gRPC is not implemented (probe.Svc/Get)" in bytes.fromhex(seen["grpc-message"][0]).decode()
    assert host.grpc_calls[0].token % 2 == 1 and host.grpc_calls[0].message == b"hello"


def test_grpc_call_to_an_unknown_cluster_is_a_parse_failure(filterkit_host, probe_wasm):
    host = filterkit_host(probe_wasm, root_id="probe", clusters={"upstream"})
    seen = observed(host.http_stream().exchange(headers("/grpc"), b"", UPSTREAM).logs)
    assert seen["grpc-result"] == [u32(WasmResult.PARSE_FAILURE)] and "grpc-close" not in seen


# -- shared data, queues, metrics, time -------------------------------------------------------------


def test_shared_data_cas_across_streams_and_vm_restarts(host):
    first = observed(host.http_stream().exchange(headers("/shared"), b"", UPSTREAM).logs)
    assert first["shared-result"] == [u32(WasmResult.NOT_FOUND)] and first["set-result"] == [u32(0)]
    second = observed(host.http_stream().exchange(headers("/shared"), b"", UPSTREAM).logs)
    assert second["shared-value"] == [hexs("v")] and second["shared-cas"] == [u32(1)]
    assert host.shared_data("probe_key") == (b"v", 2)
    assert host.set_shared_data("probe_key", "x", cas=1) == WasmResult.CAS_MISMATCH
    host.restart()  # a new VM: shared data lives on (Envoy keeps it per process)
    third = observed(host.http_stream().exchange(headers("/shared"), b"", UPSTREAM).logs)
    assert third["shared-cas"] == [u32(2)]


def test_shared_queue_between_hosts(filterkit_host, probe_wasm):
    shared = SharedState()
    receiver = filterkit_host(probe_wasm, root_id="probe", vm_id="vm", shared=shared)
    sender = filterkit_host(probe_wasm, root_id="probe", vm_id="vm", shared=shared)  # registers probe_q too
    obs = sender.http_stream().exchange(headers("/queue"), b"", UPSTREAM)
    assert observed(obs.logs)["queue"] == [hexs("hello")]  # the last registration is notified: sender's root
    assert receiver.enqueue_shared_queue("probe_q", "from test") == WasmResult.OK
    assert receiver.queue_items("probe_q") == []  # dequeued by on_queue_ready
    assert receiver.enqueue_shared_queue("nope", "x") == WasmResult.NOT_FOUND


def test_metrics_readable_from_tests(host):
    for path in ("/", "/deny"):
        host.http_stream().exchange(headers(path), b"", UPSTREAM)
    assert host.metric("probe_requests") == 2
    assert host.metric("probe_gauge") == 403  # set to the response code in on_response_headers
    assert host.metric("probe_hist") == [5, 5]
    assert host.metrics == {"probe_requests": 2, "probe_gauge": 403, "probe_hist": [5, 5], "probe_ticks": 0,
                            "probe_logged": 2}
    assert sorted(host.metric_by_id) == [4, 5, 6, 8, 12]  # Envoy's ids: type in the low 2 bits, steps of 4


def test_ticks_and_time_follow_the_virtual_clock(filterkit_host, probe_wasm):
    host = filterkit_host(probe_wasm, config="tick", root_id="probe", clock=VirtualClock(START))
    assert host.root.tick_period_ms == 1000
    assert host.advance_time(3500) == 3
    assert host.metric("probe_ticks") == 3
    assert [r.message for r in host.plugin_logs].count("tick") == 3
    seen = observed(host.http_stream().exchange(headers("/time"), b"", UPSTREAM).logs)
    assert seen["time"] == [struct.pack("<Q", START + 3_500_000_000).hex()]


def test_validate_configuration(host):
    assert host.validate_configuration("good") is True
    assert host.validate_configuration("bad") is False
    assert [r.message for r in host.plugin_logs][-2:] == ["validate=" + hexs("good"), "validate=" + hexs("bad")]


def test_foreign_functions_compress_and_uncompress(host):
    seen = observed(host.http_stream().exchange(headers("/foreign"), b"", UPSTREAM).logs)
    assert seen["foreign"] == [hexs("a" * 40)]
    assert zlib.decompress(zlib.compress(b"a" * 40)) == b"a" * 40


def test_every_log_level(host):
    obs = host.http_stream().exchange(headers("/log"), b"", UPSTREAM)
    assert [(r.level, r.message) for r in obs.logs if r.message.endswith(" line")] == [
        ("trace", "trace line"), ("debug", "debug line"), ("warn", "warn line"), ("error", "error line"),
        ("critical", "critical line")]


# -- TCP -----------------------------------------------------------------------------------------


def test_tcp_connection_callbacks(host):
    conn = host.tcp_connection()
    assert conn.new_connection_action == Action.CONTINUE
    assert conn.downstream_data(b"ping") == Action.CONTINUE
    assert bytes(conn.to_upstream) == b"[ping"
    assert conn.downstream_data(b"stop") == Action.STOP_ITERATION  # held, and the next chunk is added
    assert bytes(conn.to_upstream) == b"[ping"
    assert conn.downstream_data(b"!") == Action.CONTINUE
    assert bytes(conn.to_upstream) == b"[ping[stop!"
    assert conn.upstream_data(b"pong") == Action.CONTINUE
    assert bytes(conn.to_downstream) == b"pong]"
    conn.close_upstream(PeerType.LOCAL)
    assert not conn.finished
    conn.close_downstream(PeerType.REMOTE)  # Envoy: on_done, on_log, on_delete follow
    seen = observed(conn.logs)
    assert seen["down"] == [hexs("ping"), hexs("stop"), hexs("stop!")]
    assert seen["down-close"] == [u32(2)] and seen["up-close"] == [u32(1)]
    assert conn.logs[0].message == "new-connection"
    assert conn.finished
    assert host.get_property(conn.ctx, ("connection", "id")) == struct.pack("<Q", conn.ctx.info.connection_id)


# -- guard rails, ABI versions, module cache ----------------------------------------------------------


def case(number: int, path: str, config: str | None = None) -> Case:
    return Case(number=number, name=f"case {number}", line=number, request=Request("GET", path), upstream=UPSTREAM,
                plugin_config=config)


def test_runaway_loop_and_trap_fail_their_case_and_the_next_gets_a_fresh_vm(probe_wasm, tmp_path):
    wasm = tmp_path / "probe.wasm"
    wasm.write_bytes(probe_wasm)
    run = run_spec(Spec(Path("spec.yaml"), (case(1, "/loop"), case(2, "/trap"), case(3, "/"))), wasm,
                   default_config="", root_id="probe", fuel=20_000_000)
    loop, trap, ok = run.observations
    assert loop.error.startswith("proxy_on_request_headers: stopped after about 20,000,000 wasm instructions")
    assert "spin" in loop.error
    assert trap.error.startswith("proxy_on_request_headers: wasm trap: wasm `unreachable` instruction executed")
    assert [line.split()[0] for line in trap.error.split("wasm backtrace:\n")[1].splitlines()][:2] == [
        "deeper", "explode"]
    assert ok.error is None and run.vm_starts == 3


def test_isolated_cases_get_a_fresh_vm_each_and_keep_shared_data(probe_wasm, tmp_path):
    wasm = tmp_path / "probe.wasm"
    wasm.write_bytes(probe_wasm)
    run = run_spec(Spec(Path("spec.yaml"), (case(1, "/shared"), case(2, "/shared"))), wasm, default_config="",
                   root_id="probe", isolate=True)
    assert run.vm_starts == 2
    assert observed(run.observations[1].logs)["shared-value"] == [hexs("v")]
    assert dict(run.observations[1].metrics)["probe_requests"] == 2  # Envoy's stats outlive VMs too


def test_memory_limit_and_growth_per_request(filterkit_host, probe_wasm):
    flat = filterkit_host(probe_wasm, root_id="probe")
    assert flat.memory_growth_per_request(100, warmup=10) == 0.0
    leaky = filterkit_host(probe_wasm, config="leak", root_id="probe", memory_limit=6 * 65536)
    # every allocation is kept (the first ~100 requests fill the module's free 64 KiB)
    assert leaky.memory_growth_per_request(100, warmup=120) > 100
    with pytest.raises(PluginFailed) as failed:
        leaky.memory_growth_per_request(1000, warmup=0)
    assert "linear memory is near its limit" in str(failed.value)
    assert leaky.failed.kind == "memory"


ABI_010 = r"""(module
  (import "env" "proxy_get_configuration" (func $get_config (param i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_request" (func $continue_request (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 100) "x-missing")
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32) (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n))) (local.get $p))
  (func (export "proxy_abi_version_0_1_0"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $get_config (i32.const 16) (i32.const 20)))
    (drop (call $log (i32.const 2) (i32.load (i32.const 16)) (i32.load (i32.const 20))))
    (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (result i32)
    (i32.store (i32.const 20) (i32.const 99))
    ;; 0.1.0: a missing header is Ok with an empty value
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 100) (i32.const 9) (i32.const 16) (i32.const 20)))
      (then (if (i32.eqz (i32.load (i32.const 20)))
        (then (drop (call $log (i32.const 2) (i32.const 100) (i32.const 9)))))))
    (drop (call $continue_request))
    (i32.const 1)))"""


def test_abi_0_1_0_module(filterkit_host):
    host = filterkit_host(wasmtime.wat2wasm(ABI_010), config="old-config", root_id="old")
    assert host.abi_version == "0.1.0"
    assert [r.message for r in host.plugin_logs] == ["old-config"]  # proxy_get_configuration in on_configure
    obs = host.http_stream().exchange(headers("/"), b"", UPSTREAM)
    assert obs.error is None and [r.message for r in obs.logs] == ["x-missing"]
    assert obs.upstream_request is not None  # proxy_continue_request released the stream


def test_compiled_modules_are_cached_on_disk(monkeypatch, tmp_path, probe_wasm):
    monkeypatch.setenv("FILTERKIT_CACHE", str(tmp_path))
    path = tmp_path / "cached.wasm"
    path.write_bytes(probe_wasm)
    forget_compiled_modules()
    first = compiled_module(path)
    assert first.source == "compiled"
    entries = list((tmp_path / "modules").glob("*.cwasm"))
    assert len(entries) == 1 and entries[0].name.startswith(first.sha256)
    forget_compiled_modules()
    assert compiled_module(path).source == "disk cache"
    entries[0].write_bytes(entries[0].read_bytes()[:-100] + b"x" * 100)  # corrupted: compiled again
    forget_compiled_modules()
    again = compiled_module(path)
    assert again.source == "compiled"
    assert cache.load(wasmtime.Engine(), "0" * 64, "x") is None
    host = PluginHost(path, root_id="probe")
    host.start()
    assert host.http_stream().exchange(headers("/"), b"", UPSTREAM).error is None

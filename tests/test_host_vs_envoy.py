"""The same module and the same spec on the in-process host and on a real Envoy: every expectation
must pass on both targets, and the differential comparison must find no difference. Covers the header,
body, local-response, property and metrics paths (metrics both through proxy_get_metric, read by the
filter itself, and as the spec's ``expect.metrics``, read from Envoy's /stats), http calls answered by
the spec's ``http_calls`` (an answer, a delayed one, a closed connection), shared data, set_property,
queues, gRPC refusal and foreign functions; a case with host-only fields is skipped on Envoy.

Envoy unavailable: skipped locally, a failure in CI (``require``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from filterkit.differential import NOT_COMPARABLE, SAME, compare_runs
from filterkit.host import run_spec as run_on_host
from filterkit.project import DEFAULT_ENVOY_VERSION
from filterkit.spec import load_spec
from filterkit.verdict import judge

from conftest import require

_spec = importlib.util.spec_from_file_location("probe", Path(__file__).parent / "fixtures" / "host" / "probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

NAME = ROOT_ID = "probe"


def h(text: str) -> str:
    return text.encode().hex()


# Every case keeps request and response bodies intact except the last one (the probe grows the request
# body without fixing content-length, which leaves bytes on Envoy's upstream connection).
SPEC = f"""\
cases:
  - name: header changes and request/response properties
    request: {{path: "/h/x?q=1", headers: {{x-replace: "0", x-remove: "1", x-keep: k}}}}
    upstream: {{status: 200, headers: {{content-type: text/plain}}, body: hello}}
    expect:
      response: {{status: 200, headers: {{x-probe-resp: "1"}}, body: hello}}
      upstream:
        path: "/h/x?q=1"
        headers: {{x-probe: req, x-replace: replaced, x-remove: {{absent: true}}, x-keep: k}}
      logs:
        - {{contains: "request.path={h('/h/x?q=1')}"}}
        - {{contains: "request.url_path={h('/h/x')}"}}
        - {{contains: "request.query={h('q=1')}"}}
        - {{contains: "request.host={h('filterkit.test')}"}}
        - {{contains: "request.method={h('GET')}"}}
        - {{contains: "request.scheme={h('http')}"}}
        - {{contains: "request.protocol={h('HTTP/1.1')}"}}
        - {{contains: "request.headers.x-filterkit-case={h('1')}"}}
        - {{contains: "plugin_root_id={h(ROOT_ID)}"}}
        - {{contains: "plugin_name={h(NAME)}"}}
        - {{contains: "plugin_vm_id={h('filterkit')}"}}
        - {{contains: "xds.cluster_name={h('upstream')}"}}
        - {{equals: "xds.route_name="}}
        - {{contains: "xds.virtual_host_name={h('all')}"}}
        - {{equals: "connection.mtls=00"}}
        - {{equals: "connection.requested_server_name="}}
        - {{equals: "xds.listener_direction=0000000000000000"}}
        - {{equals: "upstream.request_attempt_count=0000000000000000"}}
        - {{equals: "upstream.request_attempt_count=0100000000000000"}}
        - {{matches: "^source.address={h('127.0.0.1:')}[0-9a-f]+$"}}
        - {{matches: "^request.time=[0-9a-f]{{16}}$"}}
        - {{equals: "node!1"}}
        - {{equals: "cluster_name!1"}}
        - {{equals: "custom.prop!1"}}
        - {{equals: "response.code=c800000000000000"}}
        - {{contains: "response.code_details={h('via_upstream')}"}}
        - {{equals: "response.flags=0000000000000000"}}
        - {{equals: "response.size=0000000000000000"}}
        - {{equals: "request.path!1"}}
        - {{equals: "req-in-resp=02000000"}}
        - {{equals: "log-path={h('/h/x?q=1')}"}}
        - {{matches: "^request.duration=[0-9a-f]{{16}}$"}}
        - {{equals: "requests-metric=0100000000000000"}}
        - {{equals: "gauge-metric=c800000000000000"}}
        - {{equals: "hist-get=02000000"}}
        - {{equals: "inc0=02000000"}}
      metrics: {{probe_requests: 1, probe_gauge: 200, probe_ticks: 0, probe_logged: 1, probe_hist: {{absent: true}}}}
  - name: local response
    request: {{path: /deny}}
    expect:
      response: {{status: 403, headers: {{x-probe-deny: "yes", x-probe-resp: "1", content-type: text/plain}},
                 body: denied by probe}}
      upstream: {{called: false}}
      logs:
        - {{equals: "response.code=9301000000000000"}}
        - {{equals: "response.code_details={h('probe_denied')}"}}
        - {{equals: "requests-metric=0200000000000000"}}
        - {{equals: "gauge-metric=9301000000000000"}}
      metrics: {{probe_requests: 2, probe_gauge: 403, probe_logged: 2}}
  - name: filter state through set_property
    request: {{path: /set}}
    expect:
      logs: [{{equals: "set-result=00000000"}}, {{equals: "get-result=00000000"}},
             {{equals: "probe.state={h('v1')}"}}]
  - name: shared data, first
    request: {{path: /shared}}
    expect:
      logs: [{{equals: "shared-result=01000000"}}, {{equals: "set-result=00000000"}}]
  - name: shared data, second
    request: {{path: /shared}}
    expect:
      logs: [{{equals: "shared-result=00000000"}}, {{equals: "shared-value={h('v')}"}},
             {{equals: "shared-cas=01000000"}}]
  - name: shared queue
    request: {{path: /queue}}
    expect:
      logs: [{{equals: "queue={h('hello')}"}}]
  - name: grpc call to a cluster that does not exist
    request: {{path: /grpc}}
    expect:
      logs: [{{equals: "grpc-result=04000000"}}, {{contains: "grpc-close", absent: true}}]
  - name: foreign functions
    request: {{path: /foreign}}
    expect:
      logs: [{{equals: "foreign={h('a' * 40)}"}}]
  - name: http call answered by the spec
    request: {{path: /call}}
    http_calls:
      probe_cluster: {{status: 201, headers: {{x-a: b}}, body: granted}}
    expect:
      upstream: {{headers: {{x-call-status: "201"}}}}
      logs: [{{equals: "call-result=00000000"}}, {{equals: "call-body={h('granted')}"}}]
  - name: http call answered late
    request: {{path: /call}}
    http_calls:
      probe_cluster: {{status: 202, delay_ms: 200}}
    expect:
      upstream: {{headers: {{x-call-status: "202"}}}}
  - name: http call whose connection closes
    request: {{path: /call}}
    http_calls:
      probe_cluster: {{reset: true}}
    expect:
      upstream: {{headers: {{x-call-status: "503"}}}}
      logs: [{{equals: "call-body={h('upstream connect error or disconnect/reset before headers. reset reason: connection termination')}"}}]
  - name: properties set by the case (host only)
    request: {{path: /h}}
    properties: {{source.address: "10.0.0.1:5000"}}
    expect:
      logs: [{{contains: "source.address={h('10.0.0.1:5000')}"}}]
  - name: log levels
    request: {{path: /log}}
    expect:
      logs:
        - {{level: trace, equals: trace line}}
        - {{level: debug, equals: debug line}}
        - {{level: warn, equals: warn line}}
        - {{level: error, equals: error line}}
        - {{level: critical, equals: critical line}}
  - name: body chunks like Envoy's HTTP/1.1 codec
    request: {{method: POST, path: /body, body: abc}}
    expect:
      upstream: {{body: "<ab"}}
      logs: [{{equals: "req-body={h('abc')}"}}, {{equals: "req-body="}}]
"""


@pytest.fixture(scope="module")
def envoy_bin():
    from filterkit.envoy.binary import envoy_binary
    from filterkit.errors import ToolchainError

    try:
        return envoy_binary(DEFAULT_ENVOY_VERSION)
    except ToolchainError as err:
        require(f"Envoy {DEFAULT_ENVOY_VERSION}", False, str(err))


def test_same_spec_passes_on_host_and_envoy(tmp_path, envoy_bin):
    from filterkit.envoy import run_envoy

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(SPEC)
    spec = load_spec(spec_file)
    wasm = tmp_path / "probe.wasm"
    wasm.write_bytes(probe.probe_wasm())
    host = run_on_host(spec, wasm, default_config="", root_id=ROOT_ID, plugin_name=NAME, retire_old_roots=False)
    envoy = run_envoy(spec, wasm, default_config="", root_id=ROOT_ID, name=NAME, version=DEFAULT_ENVOY_VERSION,
                      log_level="trace", binary=envoy_bin)
    host_results = tuple(judge(c, "host", o) for c, o in zip(spec.cases, host.observations))
    envoy_results = tuple(judge(c, envoy.target, o) for c, o in zip(spec.cases, envoy.observations))
    problems = [f"{r.target} / {r.case.name}: {d}" for r in host_results + envoy_results for d in r.differences]
    assert problems == [], "\n".join(problems)
    host_only = "properties set by the case (host only)"
    assert [(r.case.name, r.skipped) for r in envoy_results if r.skipped] == [
        (host_only, "sets properties: only the in-process host can apply it")]
    assert not any(r.skipped for r in host_results)
    metrics = {r.case.name: r.observation.metrics for r in envoy_results if r.observation.metrics is not None}
    assert metrics == {"header changes and request/response properties":
                       (("probe_gauge", 200), ("probe_logged", 1), ("probe_requests", 1), ("probe_ticks", 0)),
                       "local response": (("probe_gauge", 403), ("probe_logged", 2), ("probe_requests", 2),
                                          ("probe_ticks", 0))}
    fidelity = compare_runs(host_results, envoy_results)
    assert [(f.case_name, f.status) for f in fidelity if f.status != SAME] == [(host_only, NOT_COMPARABLE)]

"""The spec fields the host supports beyond requests and responses (properties, http_calls, ticks,
expect.metrics): parsing with located errors, running them on the host, judging them."""

from __future__ import annotations

import dataclasses
import importlib.util
import struct
from pathlib import Path

import pytest

from filterkit.errors import InputError
from filterkit.host import run_spec
from filterkit.spec import HOST_ONLY_FIELDS, HttpCallReply, MetricExpectation, TypedValue, load_spec
from filterkit.verdict import Observation, judge

_spec = importlib.util.spec_from_file_location("probe", Path(__file__).parent / "fixtures" / "host" / "probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

SPEC = """\
cases:
  - name: properties set by the case
    properties:
      source.address: "10.0.0.1:5000"
      connection.mtls: true
      request.time: {$timestamp: "2024-05-01T12:00:00Z"}
      custom.prop: {$uint64: 7}
      xds.cluster_name: null
    expect:
      logs:
        - {contains: "source.address=31302e302e302e313a35303030"}
        - {contains: "connection.mtls=01"}
        - {contains: "request.time=008063f8995bcb17"}
        - {contains: "custom.prop=0700000000000000"}
        - {contains: "xds.cluster_name!1"}
      metrics: {probe_requests: 1, probe_gauge: 200}
  - name: an http call answered by the spec
    request: {path: /call}
    http_calls:
      probe_cluster: {status: 201, headers: {x-a: b}, body: granted}
    expect:
      upstream: {headers: {x-call-status: "201"}}
      logs: [{contains: "call-body=6772616e746564"}]
      metrics: {probe_requests: {at_least: 2}, probe_ticks: 0}
  - name: ticks before the request
    config: tick
    ticks: 3
    expect:
      metrics: {probe_ticks: 3, probe_hist: {absent: true}, never_defined: {absent: true}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_parses_the_new_fields(tmp_path):
    props, call, ticks = load_spec(write(tmp_path, SPEC)).cases
    assert dict(props.properties) == {
        "source.address": "10.0.0.1:5000", "connection.mtls": True,
        "request.time": TypedValue("timestamp", 1714564800 * 10**9), "custom.prop": TypedValue("uint64", 7),
        "xds.cluster_name": None}
    assert props.host_only == ("properties",)
    assert props.expect_metrics == (("probe_requests", MetricExpectation("equals", 1)),
                                    ("probe_gauge", MetricExpectation("equals", 200)))
    assert call.http_calls == (("probe_cluster", (HttpCallReply(201, (("x-a", "b"),), b"granted"),)),)
    assert call.host_only == ()
    assert ticks.ticks == 3 and ticks.host_only == ("ticks",)
    assert HOST_ONLY_FIELDS == ("properties", "ticks")


def test_runs_them_on_the_host(tmp_path):
    spec = load_spec(write(tmp_path, SPEC))
    wasm = tmp_path / "probe.wasm"
    wasm.write_bytes(probe.probe_wasm())
    run = run_spec(spec, wasm, default_config="", root_id="probe", retire_old_roots=False)
    results = [judge(case, "host", obs) for case, obs in zip(spec.cases, run.observations)]
    assert [r.differences for r in results] == [(), (), ()]
    assert dict(run.observations[2].metrics)["probe_ticks"] == 3
    assert run.metrics["probe_hist"] == [5, 5, 5]


def test_metric_differences_and_unreported_metrics(tmp_path):
    case = load_spec(write(tmp_path, SPEC)).cases[0]
    case = dataclasses.replace(case, expect_logs=())
    obs = Observation(metrics=(("probe_requests", 2),))
    assert judge(case, "host", obs).differences == (
        "metric probe_requests: expected 1, got 2",
        "metric probe_gauge: expected 200, but the filter never defined it")
    assert judge(case, "envoy-1.40.0", Observation()).differences == (
        "metrics: this target did not report the filter's metrics",)


def test_a_skipped_case_is_neither_passed_nor_judged(tmp_path):
    case = load_spec(write(tmp_path, SPEC)).cases[0]
    result = judge(case, "envoy-1.40.0", Observation(skipped="sets properties (host only)"))
    assert result.skipped == "sets properties (host only)" and result.differences == ()


@pytest.mark.parametrize("text, message", [
    ("cases:\n  - properties: {a..b: 1}\n", ":2: cases[0].properties.a..b: a property path is dot-separated"),
    ("cases:\n  - properties:\n      x: {$int: 1}\n", ":3: cases[0].properties.x.$int: unknown type '$int'"),
    ("cases:\n  - properties:\n      x: {$uint64: -1}\n", ":3: cases[0].properties.x.$uint64: -1 is out of range"),
    ("cases:\n  - properties:\n      x: {$duration: soon}\n", "expected nanoseconds or a duration like 250ms"),
    ("cases:\n  - properties:\n      x: {$timestamp: yesterday}\n", "expected nanoseconds since the epoch"),
    ("cases:\n  - properties:\n      x: {$bool: true, $int64: 1}\n", "a typed value has exactly one key"),
    ("cases:\n  - http_calls:\n      c: {reset: true, status: 200}\n",
     ":3: cases[0].http_calls.c: 'reset: true' cannot be combined"),
    ("cases:\n  - http_calls:\n      c: {status: 99}\n", ":3: cases[0].http_calls.c.status: 99 is out of range"),
    ("cases:\n  - http_calls:\n      c: {stauts: 200}\n", "unknown key (did you mean 'status'?)"),
    ("cases:\n  - http_calls:\n      c: []\n", ":3: cases[0].http_calls.c: give at least one answer"),
    ("cases:\n  - http_calls:\n      upstream: {status: 200}\n",
     ":3: cases[0].http_calls.upstream: 'upstream' is the cluster of the test upstream"),
    ("cases:\n  - ticks: -1\n", ":2: cases[0].ticks: -1 is out of range"),
    ("cases:\n  - expect:\n      metrics: {m: {more_than: 1}}\n",
     ":3: cases[0].expect.metrics.m.more_than: unknown key"),
    ("cases:\n  - expect:\n      metrics: {m: -3}\n", ":3: cases[0].expect.metrics.m: -3 is out of range"),
    ("cases:\n  - expect:\n      metrics: {m: {absent: false}}\n", "use 'absent: true'"),
    ("cases:\n  - expect:\n      metrics: {m: {equals: 1, at_most: 2}}\n", "give exactly one of"),
])
def test_bad_new_fields_give_one_located_line(tmp_path, text, message):
    with pytest.raises(InputError) as err:
        load_spec(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_durations_and_typed_values(tmp_path):
    text = ("cases:\n  - properties:\n      d: {$duration: 250ms}\n      e: {$duration: 1.5s}\n"
            "      f: {$double: 2}\n      g: {$bytes: raw}\n      h: [a, {k: v}]\n")
    case = load_spec(write(tmp_path, text)).cases[0]
    assert dict(case.properties) == {"d": TypedValue("duration", 250_000_000),
                                     "e": TypedValue("duration", 1_500_000_000), "f": TypedValue("double", 2.0),
                                     "g": TypedValue("bytes", "raw"), "h": ("a", {"k": "v"})}
    assert struct.pack("<q", 250_000_000)  # encodings are covered in test_host_conformance.py

"""Differential runs (--target all): host vs Envoy comparison rules (filterkit/differential.py), the report
section and JUnit suite, and an end-to-end run of the WAT fixture on both targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from filterkit.differential import DIFFERS, NOT_COMPARABLE, SAME, compare, compare_runs
from filterkit.report import TargetRun, failed_total, print_report, write_junit
from filterkit.spec import Case, Request, UpstreamAnswer
from filterkit.verdict import CaseResult, HttpMessage, Observation

CASE = Case(number=1, name="c1", line=3, request=Request(), upstream=UpstreamAnswer())


def result(target="host", *, status=200, headers=(), body=b"ok", upstream=(("x-added", "1"),), error=None,
           differences=(), response=True) -> CaseResult:
    obs = Observation(response=HttpMessage(headers=tuple(headers), body=body, status=status) if response else None,
                      upstream_request=None if upstream is None else HttpMessage(headers=tuple(upstream), method="GET", path="/"),
                      error=error)
    return CaseResult(CASE, target, obs, tuple(differences))


ENVOY_EXTRA = (("date", "Mon, 23 Nov 2026 14:08:20 GMT"), ("server", "envoy"), ("x-envoy-upstream-service-time", "1"),
               ("content-length", "0"))


def test_headers_envoy_adds_are_ignored():
    host = result(headers=[("x-filter", "a")], upstream=[("x-added", "1"), ("x-request-id", "aaa")])
    envoy = result("envoy-1.40.0", headers=[("x-filter", "a"), *ENVOY_EXTRA],
                   upstream=[("x-added", "1"), ("x-request-id", "bbb"), ("x-envoy-expected-rq-timeout-ms", "30000")])
    assert compare(host, envoy).status == SAME


def test_content_length_compared_when_both_have_it():
    host = result(headers=[("content-length", "2")])
    envoy = result("envoy", headers=[("content-length", "3")])
    f = compare(host, envoy)
    assert f.status == DIFFERS and f.differences == ("response header content-length: host '2', envoy '3'",)


def test_filter_set_header_status_body_and_upstream_differences():
    host = result(status=403, headers=[("x-rule", "r1")], body=b"no", upstream=None)
    envoy = result("envoy", status=200, headers=[("X-Rule", "r2")], body=b"ok")
    f = compare(host, envoy)
    assert f.failed
    assert f.differences == ("response status: host 403, envoy 200",
                             "response header x-rule: host 'r1', envoy 'r2'",
                             "response body: host b'no', envoy b'ok'",
                             "upstream called: host no, envoy yes")


def test_verdict_difference_and_one_sided_failure():
    host = result(differences=("response status: expected 200, got 500",), error="trap in on_request_headers")
    envoy = result("envoy")
    f = compare(host, envoy)
    assert f.failed
    assert f.differences[0].startswith("verdict: host failed, envoy passed")
    assert f.differences[1] == "the filter failed on host only: trap in on_request_headers"


def test_both_failing_is_the_same():
    host = result(error="trap", response=False, upstream=None, differences=("x",))
    envoy = result("envoy", status=503, error="trap (envoy)", differences=("x",))
    assert compare(host, envoy).status == SAME


def test_cases_after_a_vm_failure_are_not_comparable_unless_both_clean():
    trap = (result(error="trap", response=False, upstream=None, differences=("x",)),
            result("envoy", status=503, error="trap", differences=("x",)))
    later_503 = (result(), result("envoy", status=503, error="the filter's Wasm VM had failed in case 1",
                                  differences=("status",)))
    later_clean = (result(), result("envoy"))
    later_diff = (result(headers=[("x-a", "1")]), result("envoy"))
    fid = compare_runs(*zip(trap, later_503, later_clean, later_diff))
    assert [f.status for f in fid] == [SAME, NOT_COMPARABLE, SAME, DIFFERS]
    assert "fresh VM" in fid[1].differences[0]


def test_metrics_compared_when_both_targets_read_them():
    host = CaseResult(CASE, "host", Observation(metrics=(("hits", 2), ("level", 7))))
    envoy = CaseResult(CASE, "envoy", Observation(metrics=(("hits", 3),)))
    f = compare(host, envoy)
    assert f.differences == ("metric hits: host 2, envoy 3", "metric level: host 7, envoy not defined")
    assert compare(host, CaseResult(CASE, "envoy", Observation())).status == SAME  # envoy did not read them


def test_a_case_skipped_on_one_target_is_not_comparable_and_reported_as_skipped(tmp_path):
    skipped = CaseResult(CASE, "envoy-1.40.0", Observation(skipped="sets properties: only the in-process host can apply it"))
    f = compare(result(), skipped)
    assert f.status == NOT_COMPARABLE and f.differences == (
        "skipped on envoy: sets properties: only the in-process host can apply it",)
    runs = [TargetRun("host", (result(),)), TargetRun("envoy-1.40.0", (skipped,))]
    assert (runs[1].passed, runs[1].failed, runs[1].skipped) == (0, 0, 1)
    lines: list[str] = []
    print_report(runs, lines.append)
    assert "envoy-1.40.0: 0 passed, 0 failed, 1 skipped in 0.00s" in lines
    assert "  SKIP  c1: sets properties: only the in-process host can apply it" in lines
    assert lines[-1] == "1 passed, 0 failed, 1 skipped"
    assert failed_total(runs) == 0
    write_junit(runs, tmp_path / "junit.xml", "demo", Path("spec.yaml"))
    xml = (tmp_path / "junit.xml").read_text()
    assert 'name="demo.envoy-1.40.0" tests="1" failures="0" errors="0" skipped="1"' in xml
    assert '<skipped message="sets properties: only the in-process host can apply it" />' in xml


def test_report_and_junit_count_fidelity_failures(tmp_path):
    host, envoy = result(), result("envoy-1.40.0", status=201)
    fid = compare_runs((host,), (envoy,))
    runs = [TargetRun("host", (host,)), TargetRun("envoy-1.40.0", (envoy,))]
    lines: list[str] = []
    print_report(runs, lines.append, fidelity=fid)
    text = "\n".join(lines)
    assert "fidelity (host vs envoy-1.40.0): 0 same, 1 differ, 0 not comparable" in text
    assert "DIFF  c1" in text and "response status: host 200, envoy 201" in text
    assert lines[-1] == "2 passed, 0 failed, 1 fidelity failure"
    assert failed_total(runs, fid) == 1
    junit = tmp_path / "j.xml"
    write_junit(runs, junit, "demo", Path("spec.yaml"), fidelity=fid)
    xml = junit.read_text()
    assert 'name="demo.fidelity"' in xml and "fidelity: response status" in xml and 'failures="1"' in xml


# ------------------------------------------------------------------------------------------ end to end

@pytest.mark.envoy
def test_fixture_filter_runs_the_same_on_host_and_envoy(tmp_path):
    """The WAT fixture on both targets: identical exchanges; after its trap, later cases not comparable."""
    import wasmtime

    from conftest import require
    from filterkit.envoy.binary import envoy_binary
    from filterkit.errors import ToolchainError
    from filterkit.project import DEFAULT_ENVOY_VERSION, load_project
    from filterkit.spec import load_spec
    from filterkit.testrun import fidelity_of, run_spec
    try:
        envoy_binary(DEFAULT_ENVOY_VERSION)
    except ToolchainError as err:
        require(f"Envoy {DEFAULT_ENVOY_VERSION}", False, str(err))
    wat = Path(__file__).parent / "fixtures" / "envoy" / "fixture_filter.wat"
    (tmp_path / "build").mkdir()
    wasm = tmp_path / "build" / "fixture.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(wat.read_text()))
    (tmp_path / "filterkit.yaml").write_text('name: fixture\nlanguage: assemblyscript\nroot_id: fixture\n'
                                            f'plugin_config: "cfg"\nenvoy: {{version: "{DEFAULT_ENVOY_VERSION}"}}\n')
    (tmp_path / "spec.yaml").write_text("""cases:
  - name: passes through
    request: {path: /a}
    expect: {response: {status: 200, headers: {x-filter: fixture}}, upstream: {headers: {x-config: cfg}}}
  - name: denied locally
    request: {path: /b, headers: {x-deny: "1"}}
    expect: {response: {status: 403, body: "denied by fixture"}, upstream: {called: false}}
  - name: traps
    request: {path: /c, headers: {x-trap: "1"}}
  - name: after the trap
    request: {path: /d}
    expect: {response: {status: 200}}
""")
    project = load_project(tmp_path)
    spec = load_spec(tmp_path / "spec.yaml")
    runs = run_spec(project, spec, ["host", "envoy"], envoy_versions=[DEFAULT_ENVOY_VERSION], wasm=wasm)
    fid = fidelity_of(runs)
    assert [f.status for f in fid] == [SAME, SAME, SAME, NOT_COMPARABLE], [f.differences for f in fid]

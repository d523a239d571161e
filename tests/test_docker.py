"""Envoy in a container (filterkit/envoy/container.py, image.py) against a real Docker-API engine.

The engine: ``$DOCKER_HOST`` when a daemon answers there; else, as root with ``dockerd`` installed
(Debian ``docker.io``), a private dockerd started for the session under a temporary folder (own
socket, data root, exec root, pid file; host networking only) and stopped at the end; else skipped
locally / failed in CI. No registry is needed: the image is built from the cached Envoy binary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import filterkit.envoy as envoy_runner
from filterkit.engine import LABEL_RUN, filterkit_containers, remove_leftovers
from filterkit.envoy.container import ContainerSettings
from filterkit.envoy.image import build_context, shared_libraries
from filterkit.errors import RunnerError, ToolchainError
from filterkit.project import DEFAULT_ENVOY_VERSION, load_project
from filterkit.spec import load_spec
from filterkit.verdict import judge

from conftest import REPO, require
from test_envoy import DEFAULT_CONFIG, MAIN_SPEC, NAME, ROOT_ID, write_spec

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="session")
def envoy_image(docker_client) -> str:
    """filterkit/envoy:<default version>, built from the cached binary (as `filterkit envoy image build`)."""
    from filterkit.envoy.image import build_image

    try:
        built = build_image(DEFAULT_ENVOY_VERSION, client=docker_client)
    except ToolchainError as err:
        require(f"Envoy {DEFAULT_ENVOY_VERSION}", False, str(err))
    return built.tag


@pytest.fixture(scope="module")
def fixture_wasm(tmp_path_factory) -> Path:
    import wasmtime

    path = tmp_path_factory.mktemp("wasm") / "fixture.wasm"
    path.write_bytes(wasmtime.wat2wasm((Path(__file__).parent / "fixtures" / "envoy" / "fixture_filter.wat").read_text()))
    return path


@pytest.fixture
def settings(docker_host, envoy_image) -> ContainerSettings:
    return ContainerSettings(image=envoy_image, docker_host=docker_host, pull=False)


def run(spec, wasm, container=None, **kw):
    return envoy_runner.run_envoy(spec, wasm, default_config=DEFAULT_CONFIG, root_id=ROOT_ID, name=NAME,
                                  version=DEFAULT_ENVOY_VERSION, container=container, **kw)


def comparable(observation):
    """What must be equal on both backends (not timings)."""
    response = observation.response
    upstream = observation.upstream_request
    drop = {"date", "x-envoy-upstream-service-time", "server", "x-request-id", "x-forwarded-proto",
            "x-envoy-expected-rq-timeout-ms"}
    return (observation.error,
            (response.status, tuple(h for h in response.headers if h[0] not in drop), response.body) if response else None,
            (upstream.method, upstream.path, tuple(h for h in upstream.headers if h[0] not in drop), upstream.body)
            if upstream else None,
            observation.logs)


# -------------------------------------------------------------------------------------------------


def test_image_context_has_envoy_and_its_glibc_files():
    from filterkit.envoy.binary import cached_binary_path

    binary = cached_binary_path(DEFAULT_ENVOY_VERSION)
    require(f"Envoy {DEFAULT_ENVOY_VERSION} in the cache", binary.is_file(), "filterkit envoy install")
    import io
    import tarfile

    names = tarfile.open(fileobj=io.BytesIO(build_context(binary, DEFAULT_ENVOY_VERSION))).getnames()
    assert "Dockerfile" in names and "rootfs/usr/local/bin/envoy" in names
    libs = shared_libraries(binary)
    assert any(p.name.startswith("libc.so") for p in libs) and any("ld-linux" in p.name for p in libs)
    assert all("rootfs" + str(p) in names for p in libs)


def test_same_spec_same_observations_as_the_local_binary(fixture_wasm, tmp_path, settings, docker_client):
    spec = write_spec(tmp_path, MAIN_SPEC)
    local = run(spec, fixture_wasm)
    contained = run(spec, fixture_wasm, container=settings)
    assert contained.runtime == "docker" and contained.image == settings.image
    assert contained.target == f"docker-envoy-{DEFAULT_ENVOY_VERSION}"
    assert contained.envoy_version == local.envoy_version == DEFAULT_ENVOY_VERSION
    for case, here, there in zip(spec.cases, local.observations, contained.observations):
        assert judge(case, contained.target, there).passed, (case.name, there)
        assert comparable(here) == comparable(there), case.name
    # the container's logs were captured and parsed like the local process's output
    assert contained.startup_logs == local.startup_logs
    assert any("wasm log" in line for line in contained.output)
    assert filterkit_containers(docker_client) == []


def test_assemblyscript_template_on_docker(assemblyscript_project, settings, docker_client):
    project = load_project(assemblyscript_project)
    spec = load_spec(project.default_spec)
    kw = dict(default_config=project.plugin_config_text, root_id=project.root_id, name=project.name,
              version=DEFAULT_ENVOY_VERSION)
    local = envoy_runner.run_envoy(spec, project.wasm_path, **kw)
    contained = envoy_runner.run_envoy(spec, project.wasm_path, container=settings, **kw)
    for case, here, there in zip(spec.cases, local.observations, contained.observations):
        assert judge(case, contained.target, there).passed, (case.name, there)
        assert judge(case, local.target, here).passed == judge(case, contained.target, there).passed
        assert comparable(here) == comparable(there), case.name
    assert filterkit_containers(docker_client) == []


def test_probe_spec_on_docker_http_calls_metrics_and_host_only_skips(tmp_path, settings, docker_client):
    """The host-vs-Envoy probe spec in a container: the http-call clusters' scripted servers, the test
    upstream and the admin API (metrics) are reached through the host network as from a local Envoy."""
    import test_host_vs_envoy as probe_spec

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(probe_spec.SPEC)
    spec = load_spec(spec_file)
    wasm = tmp_path / "probe.wasm"
    wasm.write_bytes(probe_spec.probe.probe_wasm())
    run = envoy_runner.run_envoy(spec, wasm, default_config="", root_id=probe_spec.ROOT_ID, name=probe_spec.NAME,
                                 version=DEFAULT_ENVOY_VERSION, log_level="trace", container=settings)
    results = [judge(case, run.target, obs) for case, obs in zip(spec.cases, run.observations)]
    assert [f"{r.case.name}: {d}" for r in results for d in r.differences] == []
    assert [r.case.name for r in results if r.skipped] == ["properties set by the case (host only)"]
    assert dict(run.observations[0].metrics)["probe_requests"] == 1
    assert filterkit_containers(docker_client) == []


def test_plugin_refused_and_trap_on_docker(fixture_wasm, tmp_path, settings, docker_client):
    spec = write_spec(tmp_path, """\
        cases:
          - name: fine
          - name: refused
            config: reject
          - name: traps
            request: {headers: {x-trap: "1"}}
        """)
    fine, refused, trapped = run(spec, fixture_wasm, container=settings).observations
    assert fine.error is None and fine.response.status == 200
    assert "Envoy refused the plugin with configuration 'reject'" in refused.error
    assert "proxy_on_request_headers failed" in trapped.error
    assert filterkit_containers(docker_client) == []


def test_container_removed_when_envoy_dies_mid_run(fixture_wasm, tmp_path, settings, docker_client, monkeypatch):
    spec = write_spec(tmp_path, "cases: [{name: one}, {name: two}, {name: three}]\n")
    real_send = envoy_runner._send

    def send(port, case):
        if case is not None and case.number == 2:
            for container in filterkit_containers(docker_client):
                container.kill()
        return real_send(port, case)

    monkeypatch.setattr(envoy_runner, "_send", send)
    one, two, three = run(spec, fixture_wasm, container=settings).observations
    assert one.error is None
    assert "Envoy exited" in two.error and "during this case" in two.error
    assert "Envoy exited" in three.error and "before this case" in three.error
    assert filterkit_containers(docker_client) == []


def test_container_removed_on_keyboard_interrupt(fixture_wasm, tmp_path, settings, docker_client, monkeypatch):
    spec = write_spec(tmp_path, "cases: [{name: one}, {name: two}]\n")
    real_send = envoy_runner._send
    seen = []

    def send(port, case):
        seen.extend(c.id for c in filterkit_containers(docker_client))
        if case is not None and case.number == 2:
            raise KeyboardInterrupt
        return real_send(port, case)

    monkeypatch.setattr(envoy_runner, "_send", send)
    with pytest.raises(KeyboardInterrupt):
        run(spec, fixture_wasm, container=settings)
    assert seen, "no container was running during the cases"
    assert filterkit_containers(docker_client) == []


def test_startup_failure_shows_envoys_lines_and_removes_the_container(fixture_wasm, tmp_path, settings,
                                                                      docker_client, monkeypatch):
    from filterkit.envoy import config as envoy_config

    real = envoy_config.render_bootstrap
    monkeypatch.setattr(envoy_runner, "render_bootstrap",
                        lambda **kw: real(**kw).replace("connect_timeout: 5s", "connect_timeout: 5s\n    bogus_field: 1"))
    spec = write_spec(tmp_path, "cases: [{name: one}]\n")
    with pytest.raises(RunnerError, match="Envoy exited during startup.*bogus_field"):
        run(spec, fixture_wasm, container=settings)
    assert filterkit_containers(docker_client) == []


def test_leftover_of_a_dead_process_is_removed(docker_client, envoy_image):
    container = docker_client.containers.create(envoy_image, command=["--version"],
                                                labels={LABEL_RUN: "test", "filterkit.pid": "999999999",
                                                        "filterkit.host": __import__("socket").gethostname()})
    try:
        assert remove_leftovers(docker_client) >= 1
        assert all(c.id != container.id for c in filterkit_containers(docker_client))
    finally:
        try:
            container.remove(force=True)
        except Exception:
            pass


def test_missing_image_says_how_to_build_one(docker_host, fixture_wasm, tmp_path):
    spec = write_spec(tmp_path, "cases: [{name: one}]\n")
    with pytest.raises(ToolchainError, match="filterkit envoy image build 1.40.0"):
        run(spec, fixture_wasm, container=ContainerSettings(image="filterkit/envoy:0.0.0-missing",
                                                             docker_host=docker_host, pull=False))


def test_image_build_command(docker_host, docker_client, envoy_image):
    from conftest import run_filterkit

    result = run_filterkit("envoy", "image", "build", DEFAULT_ENVOY_VERSION, "--tag", "filterkit/envoy:cli-test",
                           "--docker-host", docker_host)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("filterkit/envoy:cli-test (sha256:")
    container = docker_client.containers.create("filterkit/envoy:cli-test", network_mode="none",
                                                labels={LABEL_RUN: "image-test"})
    try:
        container.start()
        container.wait(timeout=60)
        assert f"/{DEFAULT_ENVOY_VERSION}/" in container.logs().decode()  # `envoy --version`, the image's CMD
    finally:
        container.remove(force=True)
        docker_client.images.remove("filterkit/envoy:cli-test")


def test_container_of_a_killed_filterkit_is_removed_by_the_next_run(docker_host, docker_client, envoy_image,
                                                                     fixture_wasm, tmp_path):
    """filterkit SIGKILLed mid-run cannot clean up: its labelled container is removed by the next run."""
    script = textwrap.dedent(f"""\
        import sys, time
        from pathlib import Path
        import docker
        from filterkit.envoy.container import EnvoyContainer
        from filterkit.envoy.config import Listener, render_bootstrap
        work = Path({str(tmp_path)!r})
        config = work / "bootstrap-1.yaml"
        config.write_text(render_bootstrap(wasm_path={str(fixture_wasm)!r}, listeners=[Listener("l", 0, "")],
                                           plugin_name="n", root_id="r", upstream_port=9))
        envoy = EnvoyContainer(docker.DockerClient(base_url={docker_host!r}), {envoy_image!r}, config,
                               workdir=work, wasm_path=Path({str(fixture_wasm)!r}))
        envoy.start()
        print(envoy.id, flush=True)
        time.sleep(120)
        """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        container_id = child.stdout.readline().strip()
        assert container_id, "the child did not start a container"
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert [c.id for c in filterkit_containers(docker_client)] == [container_id]  # left running
        spec = write_spec(tmp_path, "cases: [{name: one}]\n")
        settings = ContainerSettings(image=envoy_image, docker_host=docker_host, pull=False)
        assert run(spec, fixture_wasm, container=settings).observations[0].error is None
        assert filterkit_containers(docker_client) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_filterkit_test_target_docker_from_the_cli(assemblyscript_project, docker_host, envoy_image, docker_client):
    """What a user runs: `filterkit test --target docker`, engine from DOCKER_HOST."""
    result = subprocess.run([sys.executable, "-m", "filterkit", "test", str(assemblyscript_project), "--target",
                             "docker", "--image", envoy_image], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "DOCKER_HOST": docker_host, "PYTHONPATH": str(REPO)},
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    cases = len(load_spec(assemblyscript_project / "tests" / "spec.yaml").cases)
    assert f"docker-envoy-{DEFAULT_ENVOY_VERSION}: {cases} passed, 0 failed" in result.stdout
    assert filterkit_containers(docker_client) == []

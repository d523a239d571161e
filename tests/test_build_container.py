"""``filterkit build --in-container`` (filterkit/build/container.py) against a real Docker-API engine.

No registry is reachable here, so the build image is a stand-in for ``rust:1-slim`` built from this
machine's Debian Rust-to-wasm packages (tests/fixtures/rust_image.py); it has std's sources but no
prebuilt wasm std, so the container build takes the build-std path, with crates fetched from crates.io
inside the container. The engine comes from the session fixture in conftest.py (a private dockerd when
none answers). Absent engine or packages: skipped locally, a failure in CI.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, require, run_filterkit
from filterkit.build import BuildContainer, BuildError, build_project
from filterkit.engine import filterkit_containers
from filterkit.errors import InputError, ToolchainError
from filterkit.project import load_project

_fixture = importlib.util.spec_from_file_location("rust_image", Path(__file__).parent / "fixtures" / "rust_image.py")
rust_image = importlib.util.module_from_spec(_fixture)
_fixture.loader.exec_module(rust_image)

DEBIAN_PACKAGES = "rustc-web cargo-web rust-web-src wasi-libc lld-22"


@pytest.fixture(scope="module")
def image(docker_client) -> str:
    try:
        return rust_image.build_rust_image(docker_client)
    except rust_image.MissingPackages as err:
        require("Debian's Rust-to-wasm packages", False, f"{err}: apt-get install {DEBIAN_PACKAGES}")


@pytest.fixture(scope="module")
def cache_volume(docker_client):
    """A cargo cache volume of this test module only, removed at the end."""
    name = f"filterkit-test-cargo-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        docker_client.volumes.get(name).remove(force=True)
    except Exception:
        pass


@pytest.fixture(scope="module")
def rust_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("in-container") / "boxed"
    done = run_filterkit("new", "boxed", "--lang", "rust", "--dir", root)
    assert done.returncode == 0, done.stderr
    return root


def build(project_root: Path, docker_host: str, image: str, volume: str, **kwargs):
    lines: list[str] = []
    result = build_project(load_project(project_root), log=lines.append,
                           container=BuildContainer(image=image, docker_host=docker_host, cache_volume=volume,
                                                    pull=False), **kwargs)
    return result, lines


def test_cold_build_then_up_to_date_then_incremental_and_the_module_passes_its_spec(
        rust_project, docker_host, docker_client, image, cache_volume):
    lockfile = (rust_project / "Cargo.lock").read_bytes()
    cold, lines = build(rust_project, docker_host, image, cache_volume)
    assert not cold.skipped and cold.wasm.is_file() and cold.size > 10_000
    assert cold.wasm.read_bytes()[:4] == b"\0asm"
    assert any("in the container, target wasm32-wasip1, build-std" in line for line in lines), lines
    assert any("Compiling proxy-wasm" in line for line in lines), "cargo's progress is streamed"
    assert (rust_project / "Cargo.lock").read_bytes() == lockfile
    assert not (rust_project / "target").exists(), "the target folder lives in the cache volume"
    assert {p.stat().st_uid for p in rust_project.rglob("*")} == {os.getuid()}

    again, _ = build(rust_project, docker_host, image, cache_volume)
    assert again.skipped and again.sha256 == cold.sha256

    source = rust_project / "src" / "lib.rs"
    source.write_text(source.read_text() + "\n// a change\n")
    warm, lines = build(rust_project, docker_host, image, cache_volume)
    assert not warm.skipped
    assert not any("Compiling proxy-wasm" in line for line in lines), "crates and std come from the cache volume"
    assert warm.seconds < cold.seconds

    done = run_filterkit("test", rust_project, "--target", "host", "--no-build")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stdout
    assert not filterkit_containers(docker_client)


def test_compile_error_has_file_and_line_and_keeps_the_last_module(rust_project, docker_host, docker_client, image,
                                                                   cache_volume):
    project = load_project(rust_project)
    if not project.wasm_path.is_file():
        build(rust_project, docker_host, image, cache_volume)
    before = project.wasm_path.read_bytes()
    source = rust_project / "src" / "lib.rs"
    original = source.read_text()
    source.write_text(original + "\nfn broken() -> u32 { \"not a number\" }\n")
    try:
        with pytest.raises(BuildError) as caught:
            build(rust_project, docker_host, image, cache_volume)
    finally:
        source.write_text(original)
    line = len(original.splitlines()) + 2
    assert f"first at src/lib.rs:{line}:" in str(caught.value)
    assert "mismatched types" in str(caught.value)
    assert "expected `u32`" in caught.value.diagnostics
    assert project.wasm_path.read_bytes() == before
    assert not filterkit_containers(docker_client)


def test_crates_that_cannot_be_fetched_are_named_as_such(tmp_path, docker_host, docker_client, image, monkeypatch):
    root = tmp_path / "offline"
    assert run_filterkit("new", "offline", "--lang", "rust", "--dir", root).returncode == 0
    with socket.socket() as closed:  # a proxy port nobody listens on: every download fails at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("CARGO_HTTP_PROXY", f"http://127.0.0.1:{port}")
    volume = f"filterkit-test-empty-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(ToolchainError) as caught:
            build(root, docker_host, image, volume)
    finally:
        docker_client.volumes.get(volume).remove(force=True)
    message = str(caught.value)
    assert message.startswith("cargo could not fetch what the build of offline needs")
    assert "in container " + image in message
    assert "check that the container reaches crates.io" in message
    assert not (root / "build" / "offline.wasm").exists()
    assert not filterkit_containers(docker_client)


def test_ctrl_c_removes_the_build_container_and_keeps_the_last_module(tmp_path, docker_host, docker_client, image):
    root = tmp_path / "interrupted"
    assert run_filterkit("new", "interrupted", "--lang", "rust", "--dir", root).returncode == 0
    module = root / "build" / "interrupted.wasm"
    module.parent.mkdir()
    module.write_bytes(b"\0asm last good module")
    # A tag of its own: a target folder of its own in the cache volume, so the build runs long enough.
    tag = f"filterkit-test/rust-wasm:interrupt-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(image).tag(tag)
    proc = subprocess.Popen([sys.executable, "-m", "filterkit", "build", str(root), "--in-container",
                             "--container-image", tag], env={**os.environ, "PYTHONPATH": str(REPO),
                                                             "DOCKER_HOST": docker_host},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not filterkit_containers(docker_client) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert filterkit_containers(docker_client), "the build container did not start"
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        docker_client.images.remove(tag)
    assert proc.returncode == 130, err
    assert not filterkit_containers(docker_client)
    assert module.read_bytes() == b"\0asm last good module"
    assert [p.name for p in module.parent.iterdir()] == ["interrupted.wasm"]


def test_an_image_that_cannot_be_fetched_is_one_clear_line(rust_project, docker_host):
    env_image = "registry.invalid/filterkit/no-such-rust:1"
    done = run_filterkit("build", rust_project, "--in-container", "--container-image", env_image, "--force",
                         env_extra={"DOCKER_HOST": docker_host})
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert errors[0].startswith(f"error: could not fetch the build image {env_image}: ")
    assert "--container-image" in errors[0]


def test_an_image_without_rust_says_so(rust_project, docker_host, docker_client, image):
    # The Envoy image of the other tests has no shell at all; this one has a shell but no cargo.
    bare = rust_image.build_shell_image(docker_client)
    with pytest.raises(ToolchainError) as caught:
        build(rust_project, docker_host, bare, "filterkit-test-unused", force=True)
    assert str(caught.value).startswith(f"cannot build Rust in image {bare}: no cargo on PATH in this image")


def test_assemblyscript_projects_are_refused(tmp_path):
    root = tmp_path / "as"
    assert run_filterkit("new", "as-filter", "--dir", root).returncode == 0
    with pytest.raises(InputError, match="--in-container builds Rust projects"):
        build_project(load_project(root), container=BuildContainer())
    done = run_filterkit("build", root, "--in-container")
    assert done.returncode == 2 and "--in-container builds Rust projects" in done.stderr


def test_no_engine_is_one_clear_line(rust_project, tmp_path):
    socket_path = tmp_path / "nothing.sock"
    done = run_filterkit("build", rust_project, "--in-container", "--force",
                         env_extra={"DOCKER_HOST": f"unix://{socket_path}"})
    assert done.returncode == 2
    assert f"no Docker engine answers at unix://{socket_path}" in done.stderr

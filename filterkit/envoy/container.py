"""Envoy in a container, through the Docker SDK (any Docker-API engine: dockerd, podman's service).

    from filterkit.envoy import run_envoy
    from filterkit.envoy.container import ContainerSettings
    run = run_envoy(spec, wasm, ..., version="1.40.0", container=ContainerSettings())

``EnvoyContainer`` behaves like ``EnvoyProcess`` (same arguments, readiness, output parsing, admin API):

- **Network**: ``network_mode="host"``: the container shares the host's network namespace, so the
  bootstrap's 127.0.0.1 listeners, admin port and test upstream are the same on both sides, and every
  port is still chosen by the kernel (port 0). The engine must therefore run on this machine (a local
  socket or a local podman service), which bind mounts need anyway.
- **Files**: the filter's ``.wasm`` and the rendered bootstrap are bind-mounted read-only at their host
  paths, so the bootstrap is the same file for both backends; the run's temporary folder is mounted
  writable at its host path for ``--admin-address-path``.
- **Logs**: the container's stdout+stderr are streamed by a thread and parsed by ``logs.parse_line``,
  exactly like the local process's output.
- **Cleanup**: the container is removed when the run ends, also on failure and Ctrl-C (context
  manager). Containers carry the labels ``filterkit.run=<uuid>`` and ``filterkit.pid=<pid>``:
  ``remove_leftovers`` (called before each run) removes those whose filterkit process is gone, e.g.
  after a SIGKILL; ``filterkit envoy containers --prune`` does the same by hand.
- **Image**: ``ContainerSettings.image``, default ``envoyproxy/envoy:v<version>`` if present or
  pullable, else ``filterkit/envoy:<version>`` built by ``filterkit envoy image build VERSION``.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import RunnerError
from ..engine import LABEL_RUN, docker_client, one_line, remove_container, remove_containers, remove_leftovers, run_labels
from .image import ENVOY_IN_IMAGE, LOCAL_REPOSITORY, ensure_image, local_image, official_image
from .process import READY_TIMEOUT, STOP_TIMEOUT, EnvoyBase, EnvoyStartError

CONTAINER_READY_TIMEOUT = 60.0  # a cold engine may need a while to set up the first container


@dataclass(frozen=True)
class ContainerSettings:
    """How to run Envoy in a container. All fields optional."""

    image: str | None = None  # default: envoyproxy/envoy:v<version>, else filterkit/envoy:<version>
    docker_host: str | None = None  # default: $DOCKER_HOST (else the engine's default socket)
    pull: bool = True  # try pulling an image the engine does not have
    ready_timeout: float = CONTAINER_READY_TIMEOUT


class ContainerBackend:
    """Starts ``EnvoyContainer``s of one image for one run (``run_envoy(..., container=settings)``)."""

    runtime = "docker"

    def __init__(self, settings: ContainerSettings, version: str, client=None):
        self.settings = settings
        self.version = version
        self.client = client or docker_client(settings.docker_host)
        self.image = resolve_image(self.client, settings, version)
        self.run_id = uuid.uuid4().hex
        self.binary = None
        remove_leftovers(self.client)

    def describe(self) -> str:
        return f"Envoy image {self.image}"

    def launch(self, config_file: Path, *, workdir: Path, wasm_path: Path, wasm_log_level: str) -> "EnvoyContainer":
        return EnvoyContainer(self.client, self.image, config_file, workdir=workdir, wasm_path=wasm_path,
                              run_id=self.run_id, wasm_log_level=wasm_log_level,
                              ready_timeout=self.settings.ready_timeout)

    def close(self) -> None:
        """Remove whatever container of this run is still there (normally none)."""
        remove_containers(self.client, {LABEL_RUN: self.run_id})
        try:
            self.client.close()
        except Exception:
            pass


def resolve_image(client, settings: ContainerSettings, version: str) -> str:
    """The image to run: ``settings.image``, else the official image when the engine has it, else the
    local ``filterkit/envoy:<version>`` when it has that, else the official one pulled."""
    import docker.errors

    if settings.image:
        ensure_image(client, settings.image, pull=settings.pull, version=version)
        return settings.image
    for candidate in (official_image(version), local_image(version)):
        try:
            client.images.get(candidate)
            return candidate
        except docker.errors.ImageNotFound:
            continue
        except docker.errors.APIError as err:
            raise RunnerError(f"the Docker engine could not look up image {candidate}: {one_line(err)}") from None
    ensure_image(client, official_image(version), pull=settings.pull, version=version)
    return official_image(version)


class EnvoyContainer(EnvoyBase):
    """``with EnvoyContainer(client, image, config_file, workdir=d, wasm_path=w) as envoy: …`` — the
    container counterpart of ``EnvoyProcess``; the container is removed by ``stop()``."""

    kind = "container"

    def __init__(self, client, image: str, config_file: Path, *, workdir: Path, wasm_path: Path,
                 run_id: str | None = None, wasm_log_level: str = "debug",
                 ready_timeout: float = CONTAINER_READY_TIMEOUT, extra_args: tuple[str, ...] = ()):
        super().__init__(config_file, workdir=workdir, wasm_log_level=wasm_log_level,
                         ready_timeout=ready_timeout, extra_args=extra_args)
        self.client = client
        self.image = image
        self.wasm_path = Path(wasm_path)
        self.run_id = run_id or uuid.uuid4().hex
        self.container = None
        self._reader: threading.Thread | None = None
        self._stopped = False

    @property
    def _started(self) -> bool:
        return self.container is not None

    @property
    def id(self) -> str | None:
        return self.container.id if self.container is not None else None

    def container_options(self) -> dict:
        from docker.types import Mount

        workdir = str(self.workdir.resolve())
        mounts = [Mount(workdir, workdir, type="bind", read_only=False),
                  Mount(str(self.config_file.resolve()), str(self.config_file.resolve()), type="bind", read_only=True),
                  Mount(str(self.wasm_path.resolve()), str(self.wasm_path.resolve()), type="bind", read_only=True)]
        return dict(image=self.image, entrypoint=[ENVOY_IN_IMAGE], command=self.envoy_args(),
                    network_mode="host", mounts=mounts, working_dir=workdir, user="0:0", detach=True,
                    labels=run_labels(self.run_id),
                    stop_signal="SIGTERM")

    def start(self) -> None:
        """Create and start the container, wait until ``/ready`` says LIVE; ``EnvoyStartError`` (with
        Envoy's output) otherwise, after the container was removed."""
        if self.container is not None:
            raise RuntimeError("this EnvoyContainer was started already")
        self._admin_file.unlink(missing_ok=True)
        started = time.monotonic()
        try:
            self.container = self.client.containers.create(**self.container_options())
            self.container.start()
        except BaseException as err:
            self.stop()  # removes a container that was created but did not start
            if isinstance(err, Exception):
                raise RunnerError(f"could not start a container of {self.image}: {one_line(err)}") from None
            raise
        self._follow_until_ready(started)

    def _poll(self) -> int | None:
        if self.container is None:
            return None
        try:
            self.container.reload()
        except Exception:  # NotFound: removed behind our back
            return self.exit_code if self.exit_code is not None else -1
        state = self.container.attrs.get("State", {})
        if state.get("Status") in ("exited", "dead"):
            return int(state.get("ExitCode", -1))
        return None

    @property
    def running(self) -> bool:
        return self.container is not None and not self._stopped and self._poll() is None

    def exited_within(self, seconds: float) -> bool:
        if self.container is None or self._stopped:
            return True
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._poll() is not None:
                return True
            time.sleep(0.05)
        return self._poll() is not None

    def stop(self) -> int | None:
        """SIGTERM Envoy (SIGKILL after ``STOP_TIMEOUT``), collect its output, remove the container;
        idempotent. The exit status."""
        container = self.container
        if container is None or self._stopped:
            return self.exit_code
        try:
            try:
                if self._poll() is None:
                    container.stop(timeout=int(STOP_TIMEOUT))
                self.exit_code = self._poll()
            except Exception:
                pass
            self._join_reader()
        finally:
            # Also on KeyboardInterrupt above: never leave the container behind.
            self._stopped = True
            remove_container(container)
        return self.exit_code

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _read(self) -> None:
        """Envoy's output from the container's log stream, cut into lines."""
        pending = b""
        try:
            for chunk in self.container.logs(stream=True, follow=True, stdout=True, stderr=True):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    self._add_line(raw.decode("utf-8", "replace"))
        except Exception:
            pass
        finally:
            if pending:
                self._add_line(pending.decode("utf-8", "replace"))
            self._output_ended()


__all__ = ["ContainerSettings", "ContainerBackend", "EnvoyContainer", "EnvoyStartError", "LOCAL_REPOSITORY",
           "READY_TIMEOUT"]

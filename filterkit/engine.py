"""The Docker engine, shared by the stages that use containers (``filterkit build --in-container``,
Envoy in a container): a client, the labels that mark filterkit's containers, their cleanup (also of
containers a killed filterkit left behind), and a private ``dockerd`` for tests, CI and benchmarks.

Containers carry ``filterkit.run=<uuid>``, ``filterkit.pid=<pid>`` and ``filterkit.host=<hostname>``
(``run_labels``): ``remove_leftovers`` removes those whose filterkit process on this host is gone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from .errors import ToolchainError

LABEL_RUN = "filterkit.run"
LABEL_PID = "filterkit.pid"
LABEL_HOST = "filterkit.host"


def run_labels(run_id: str) -> dict[str, str]:
    """The labels of a container this filterkit process starts for run ``run_id``."""
    return {LABEL_RUN: run_id, LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()}


def docker_client(base_url: str | None = None):
    """A Docker SDK client for ``base_url`` or ``DOCKER_HOST`` (default: the local socket);
    ``ToolchainError`` when the SDK is missing or no engine answers."""
    try:
        import docker
        import docker.errors
    except ImportError:
        raise ToolchainError("the Python 'docker' package is missing: pip install 'docker>=7'") from None
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
    except Exception as err:  # DockerException, requests' ConnectionError …
        where = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock (DOCKER_HOST unset)"
        raise ToolchainError(f"no Docker engine answers at {where}: {one_line(err)} (start dockerd or "
                             f"'podman system service', and set DOCKER_HOST)") from None
    return client


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:400] or type(err).__name__


def has_image(client, image: str) -> bool:
    """True when the engine has ``image``; ``ToolchainError`` when it cannot tell."""
    import docker.errors

    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as err:
        raise ToolchainError(f"the Docker engine could not look up image {image}: {one_line(err)}") from None


def pull_image(client, image: str) -> str | None:
    """Pull ``image`` into the engine: None when that worked, else why not (the engine's own words)."""
    try:
        client.images.pull(image)
        return None
    except Exception as err:  # APIError, ImageNotFound, requests' errors
        return getattr(err, "explanation", None) or one_line(err)


def remove_container(container) -> None:
    try:
        container.remove(force=True, v=True)
    except Exception:
        pass


def filterkit_containers(client, labels: dict[str, str] | None = None) -> list:
    """Containers (any state) started by filterkit, optionally narrowed by ``labels``."""
    wanted = [f"{k}={v}" for k, v in (labels or {}).items()] or [LABEL_RUN]
    return client.containers.list(all=True, filters={"label": wanted})


def remove_containers(client, labels: dict[str, str] | None = None) -> int:
    removed = 0
    for container in filterkit_containers(client, labels):
        remove_container(container)
        removed += 1
    return removed


def remove_leftovers(client) -> int:
    """Remove filterkit containers whose filterkit process (on this host) is gone; how many."""
    removed = 0
    try:
        containers = filterkit_containers(client)
    except Exception:
        return 0
    for container in containers:
        labels = container.labels or {}
        if labels.get(LABEL_HOST) != socket.gethostname():
            continue
        try:
            pid = int(labels.get(LABEL_PID, "0"))
        except ValueError:
            pid = 0
        if pid > 0 and _pid_alive(pid):
            continue
        remove_container(container)
        removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------------
# A private Docker engine for tests, CI and benchmarks


class DockerDaemon:
    """``with DockerDaemon(folder) as daemon: daemon.host`` — a dockerd of our own, in its own session,
    with everything (data, exec root, socket, pid file, log) under ``folder``. Needs root and the
    ``dockerd`` binary (Debian: ``apt-get install docker.io``). Stopping it removes filterkit's
    containers first."""

    def __init__(self, folder: Path, *, start_timeout: float = 60.0):
        self.folder = Path(folder)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def socket_path(self) -> Path:
        return self.folder / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.folder / "dockerd.log"

    def __enter__(self) -> "DockerDaemon":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        import shutil

        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise ToolchainError("dockerd is not installed (Debian: apt-get install docker.io)")
        if len(str(self.socket_path)) > 100:
            raise ToolchainError(f"socket path {self.socket_path} is too long for a unix socket: use a shorter folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        cmd = [dockerd, "--data-root", str(self.folder / "data"), "--exec-root", str(self.folder / "exec"),
               "-H", self.host, "--pidfile", str(self.folder / "docker.pid"),
               # Host networking only: no bridge, no iptables rules left on the machine.
               "--bridge=none", "--iptables=false", "--ip-masq=false"]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail_text = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
                self.proc = None
                raise ToolchainError(f"dockerd exited at start: {' | '.join(tail_text)}")
            if self.answers():
                return
            time.sleep(0.2)
        self.stop()
        raise ToolchainError(f"dockerd did not answer within {self.start_timeout:.0f} s (log: {self.log_path})")

    def answers(self) -> bool:
        return engine_answers(self.host)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            import docker

            client = docker.DockerClient(base_url=self.host, timeout=10)
            remove_containers(client)
            client.close()
        except Exception:
            pass
        import signal

        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._unmount_leftovers()

    def _unmount_leftovers(self) -> None:
        """dockerd leaves e.g. its ``exec/netns/default`` nsfs mount behind: unmount what is under the folder."""
        try:
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        except OSError:
            return
        root = str(self.folder.resolve())
        for point in sorted((m for m in mounts if m == root or m.startswith(root + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, stdin=subprocess.DEVNULL)

    def remove(self) -> None:
        """Stop the daemon and delete its folder (images included)."""
        import shutil

        self.stop()
        self._unmount_leftovers()
        shutil.rmtree(self.folder, ignore_errors=True)


def default_docker_host() -> str | None:
    """``$DOCKER_HOST``, else ``unix:///var/run/docker.sock`` when that socket exists, else None."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    return "unix:///var/run/docker.sock" if Path("/var/run/docker.sock").exists() else None


def engine_answers(host: str | None = None) -> bool:
    """True when a Docker-API engine answers at ``host`` (default ``$DOCKER_HOST``, else the standard
    socket /var/run/docker.sock when it exists)."""
    host = host or default_docker_host()
    if not host:
        return False
    try:
        import docker

        client = docker.DockerClient(base_url=host, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False

"""``EnvoyProcess``: one real Envoy, started, waited for and always stopped (like a testcontainer).

Envoy runs in its own session (so a Ctrl-C in the terminal reaches only filterkit, which then stops
Envoy itself), with one worker thread, hot restart off, every port chosen by the kernel (port 0;
the admin address comes back through ``--admin-address-path``, listener ports from ``/listeners``),
and its output (stdout and stderr together) read line by line by a thread.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import RunnerError
from .logs import ENVOY_LEVEL_NAMES, LOG_FORMAT, EnvoyLine, parse_line, tail

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
ACCESS_LOG_FLUSH_MS = 20

# No proxies for talking to 127.0.0.1, whatever the environment says.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EnvoyStartError(RunnerError):
    """Envoy exited or did not become ready; ``lines`` holds all it printed."""

    def __init__(self, message: str, lines: list[EnvoyLine], exit_code: int | None):
        super().__init__(message)
        self.lines = lines
        self.exit_code = exit_code

    @property
    def address_in_use(self) -> bool:
        return any("address already in use" in l.message.lower() or "cannot bind" in l.message.lower()
                   for l in self.lines)


class EnvoyBase:
    """What a local Envoy process and an Envoy container share: the command line, the output read
    line by line, readiness through the admin address file + ``/ready``, the admin API. Subclasses
    provide ``start``/``stop``, ``_poll`` (exit status or None), ``running`` and ``exited_within``."""

    kind = "envoy"

    def __init__(self, config_file: Path, *, workdir: Path, wasm_log_level: str = "debug",
                 ready_timeout: float = READY_TIMEOUT, extra_args: tuple[str, ...] = ()):
        self.config_file = Path(config_file)
        self.workdir = Path(workdir)
        self.wasm_log_level = wasm_log_level
        self.ready_timeout = ready_timeout
        self.extra_args = tuple(extra_args)
        self.admin_address: str | None = None
        self.startup_seconds = 0.0
        self.exit_code: int | None = None
        self._lines: list[EnvoyLine] = []
        self._cond = threading.Condition()
        self._eof = False

    def envoy_args(self) -> list[str]:
        """Envoy's arguments (without the binary)."""
        level = ENVOY_LEVEL_NAMES[self.wasm_log_level]
        return ["-c", str(self.config_file),
                "--concurrency", "1",
                "--disable-hot-restart", "--use-dynamic-base-id",
                "--admin-address-path", str(self._admin_file),
                "--file-flush-interval-msec", str(ACCESS_LOG_FLUSH_MS),
                "--drain-time-s", "0", "--drain-strategy", "immediate",
                "--log-level", "warning",
                "--component-log-level", f"wasm:{level},lua:info",
                "--log-format", LOG_FORMAT,
                *self.extra_args]

    @property
    def _admin_file(self) -> Path:
        return self.workdir / f"{self.config_file.stem}.admin-address"

    def __enter__(self):
        if not self._started:  # also usable after an explicit start()
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def _started(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> int | None:
        raise NotImplementedError

    def _poll(self) -> int | None:
        raise NotImplementedError

    def _join_reader(self) -> None:
        pass

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def exited_within(self, seconds: float) -> bool:
        raise NotImplementedError

    def _follow_until_ready(self, started: float) -> None:
        """Read Envoy's output in a thread and wait for ``/ready``; stop Envoy if that fails."""
        try:
            self._reader = threading.Thread(target=self._read, name="filterkit-envoy-output", daemon=True)
            self._reader.start()
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.ready_timeout
        while True:
            code = self._poll()
            if code is not None:
                self._join_reader()
                lines = self.lines()
                raise EnvoyStartError(f"Envoy exited during startup (exit status {code}): {tail(lines)}",
                                      lines, code)
            if self.admin_address is None:
                try:
                    text = self._admin_file.read_text().strip()
                    self.admin_address = text or None
                except OSError:
                    pass
            if self.admin_address is not None:
                try:
                    status, body = self.admin_get("/ready", timeout=1.0)
                    if status == 200 and body.strip() == "LIVE":
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                lines = self.lines()
                raise EnvoyStartError(f"Envoy did not become ready within {self.ready_timeout:.0f} s: "
                                      f"{tail(lines)}", lines, None)
            time.sleep(0.02)

    # ---------------------------------------------------------------------------------------- output

    def _add_line(self, raw: str) -> None:
        line = parse_line(raw)
        with self._cond:
            self._lines.append(line)
            self._cond.notify_all()

    def _output_ended(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def lines(self) -> list[EnvoyLine]:
        with self._cond:
            return list(self._lines)

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until some output line satisfies ``predicate`` (True), Envoy's output ends or time runs out."""
        deadline = time.monotonic() + timeout
        checked = 0
        with self._cond:
            while True:
                for line in self._lines[checked:]:
                    if predicate(line):
                        return True
                checked = len(self._lines)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    return False
                self._cond.wait(remaining)

    # ----------------------------------------------------------------------------------------- admin

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        if self.admin_address is None:
            raise OSError("Envoy's admin address is not known yet")
        try:
            with _LOCAL.open(f"http://{self.admin_address}{path}", timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode("utf-8", "replace")

    def listener_ports(self) -> dict[str, int]:
        """Listener name -> the port Envoy bound on 127.0.0.1."""
        status, body = self.admin_get("/listeners?format=json")
        if status != 200:
            raise RunnerError(f"Envoy's admin API answered {status} to /listeners: {body[:200]}")
        ports = {}
        for entry in json.loads(body).get("listener_statuses", []):
            address = entry.get("local_address", {}).get("socket_address", {})
            ports[entry["name"]] = int(address.get("port_value", 0))
        return ports

    def server_version(self) -> str:
        """The version Envoy reports on ``/server_info`` (e.g. ``1.40.0``), empty when unknown."""
        try:
            status, body = self.admin_get("/server_info", timeout=5.0)
            version = json.loads(body).get("version", "") if status == 200 else ""
        except (OSError, ValueError):
            return ""
        match = re.search(r"/(\d+\.\d+\.\d+)(-[\w.-]+)?/", version)
        return match.group(1) if match else ""


class EnvoyProcess(EnvoyBase):
    """``with EnvoyProcess(binary, config_file, workdir=d) as envoy: envoy.listener_ports() …``"""

    kind = "process"

    def __init__(self, binary: Path, config_file: Path, *, workdir: Path, wasm_log_level: str = "debug",
                 ready_timeout: float = READY_TIMEOUT, extra_args: tuple[str, ...] = ()):
        super().__init__(config_file, workdir=workdir, wasm_log_level=wasm_log_level,
                         ready_timeout=ready_timeout, extra_args=extra_args)
        self.binary = Path(binary)
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ life

    def command(self) -> list[str]:
        return [str(self.binary), *self.envoy_args()]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def _started(self) -> bool:
        return self._proc is not None

    def _poll(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> None:
        """Start Envoy and wait until its admin ``/ready`` says LIVE; ``EnvoyStartError`` otherwise
        (Envoy is stopped again before it is raised). One start per object."""
        if self._proc is not None:
            raise RuntimeError("this EnvoyProcess was started already")
        self._admin_file.unlink(missing_ok=True)
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
                                          preexec_fn=_die_with_parent)
        except OSError as err:
            raise RunnerError(f"could not start Envoy {self.binary}: {err.strerror or err}") from None
        self._follow_until_ready(started)

    def stop(self) -> int | None:
        """SIGTERM the Envoy session, SIGKILL it after ``STOP_TIMEOUT``; idempotent. The exit status."""
        proc = self._proc
        if proc is None:
            return self.exit_code
        try:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # Also on KeyboardInterrupt during the wait above: never leave Envoy behind.
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            self.exit_code = proc.returncode
            self._join_reader()
            if proc.stdout is not None:
                proc.stdout.close()
        return self.exit_code

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    # ---------------------------------------------------------------------------------------- output

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            for raw in iter(self._proc.stdout.readline, b""):
                self._add_line(raw.decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass
        finally:
            self._output_ended()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exited_within(self, seconds: float) -> bool:
        """True when Envoy has exited or does so within ``seconds``: a killed process closes its
        sockets before it can be reaped, so a failed request alone does not tell."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM Envoy when filterkit dies without cleaning up (SIGKILL,
    an unhandled SIGTERM), since its own session keeps it out of reach of the terminal's signals."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session: the group id is Envoy's pid
    except (ProcessLookupError, PermissionError):
        pass


class LocalBackend:
    """Starts ``EnvoyProcess``es of one local binary for one run (the default of ``run_envoy``)."""

    runtime = "local"
    image = None

    def __init__(self, binary: Path):
        self.binary = Path(binary)

    def describe(self) -> str:
        return f"Envoy binary {self.binary}"

    def launch(self, config_file: Path, *, workdir: Path, wasm_path: Path, wasm_log_level: str) -> EnvoyProcess:
        return EnvoyProcess(self.binary, config_file, workdir=workdir, wasm_log_level=wasm_log_level,
                            ready_timeout=READY_TIMEOUT)

    def close(self) -> None:
        pass

#!/usr/bin/env python3
"""Stress the Envoy harness's cleanup: N consecutive runs, with induced failures, then check that no
Envoy process, upstream port, temporary folder or container is left behind.

    python3 benchmarks/stress_cleanup.py                 # 100 runs on the local Envoy binary
    python3 benchmarks/stress_cleanup.py --docker        # every other run in a container as well
    python3 benchmarks/stress_cleanup.py --timing        # time a 20-case spec (local, and --docker) and startup

The runs cycle through: a passing spec, Envoy SIGKILLed during case 2 (container: killed through the
engine), a bad bootstrap (Envoy refuses to start), Ctrl-C (KeyboardInterrupt) during case 2, and a
plugin configuration the filter refuses. Docker: ``$DOCKER_HOST`` if it answers, else a private dockerd
(root + ``dockerd`` needed), whose Envoy image is built from the cached binary. Exit status 1 when
anything is left over or a run did not end the way it should.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import filterkit.envoy as envoy_runner  # noqa: E402
from filterkit.envoy import process as envoy_process  # noqa: E402
from filterkit.envoy.upstream import UpstreamServer  # noqa: E402
from filterkit.errors import RunnerError  # noqa: E402
from filterkit.project import DEFAULT_ENVOY_VERSION  # noqa: E402
from filterkit.spec import load_spec  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "envoy" / "fixture_filter.wat"
KINDS = ("pass", "killed", "bad-config", "interrupt", "refused")


class Tracker:
    """Records what the harness started: Envoy processes/containers and upstream ports."""

    def __init__(self):
        self.ports: list[int] = []
        self.current = None  # the running EnvoyBase
        self.seen_running: list[int] = []
        real_enter = UpstreamServer.__enter__
        real_start = envoy_process.EnvoyBase._wait_ready
        tracker = self

        def enter(server):
            result = real_enter(server)
            tracker.ports.append(server.port)
            return result

        def wait_ready(envoy, started):
            tracker.current = envoy
            return real_start(envoy, started)

        UpstreamServer.__enter__ = enter
        envoy_process.EnvoyBase._wait_ready = wait_ready

    def kill_current(self) -> None:
        envoy = self.current
        if getattr(envoy, "container", None) is not None:
            envoy.container.kill()
        elif getattr(envoy, "pid", None):
            os.kill(envoy.pid, 9)


def envoy_pids() -> list[int]:
    """Processes (local or in a container: same kernel) running a filterkit bootstrap."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"filterkit-envoy-" in part for part in cmdline) and any(part.endswith(b"envoy") for part in cmdline[:1]):
            found.append(int(entry.name))
    return found


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def leftover_tempdirs() -> list[str]:
    return sorted(str(p) for p in Path(tempfile.gettempdir()).glob("filterkit-envoy-*"))


def spec_file(folder: Path, cases: int, refused: bool = False) -> Path:
    lines = ["cases:"]
    for i in range(cases):
        lines.append(f"  - name: case {i + 1}\n    request: {{path: /c{i + 1}, headers: {{x-user: u{i}}}}}\n"
                     f"    upstream: {{status: 200, body: ok}}\n    expect: {{response: {{status: 200}}}}")
    if refused:
        lines.append("  - name: refused\n    config: reject")
    path = folder / ("spec-refused.yaml" if refused else f"spec-{cases}.yaml")
    path.write_text("\n".join(lines) + "\n")
    return path


def one_run(kind: str, spec, refused_spec, wasm: Path, tracker: Tracker, container) -> str:
    """Run once with the induced failure ``kind``; returns how it ended ('ok' or a problem)."""
    real_send = envoy_runner._send
    real_render = envoy_runner.render_bootstrap

    def send(port, case):
        if case is not None and case.number == 1 and not tracker.seen_running:
            tracker.seen_running = envoy_pids()  # the leftover check must see a running Envoy
        if case is not None and case.number == 2:
            if kind == "killed":
                tracker.kill_current()
            elif kind == "interrupt":
                raise KeyboardInterrupt
        return real_send(port, case)

    envoy_runner._send = send
    if kind == "bad-config":
        envoy_runner.render_bootstrap = lambda **kw: real_render(**kw).replace(
            "connect_timeout: 5s", "connect_timeout: 5s\n    bogus_field: 1")
    try:
        run = envoy_runner.run_envoy(refused_spec if kind == "refused" else spec, wasm, default_config="default-config",
                                     root_id="fixture-root", name="fixture", version=DEFAULT_ENVOY_VERSION,
                                     container=container)
    except KeyboardInterrupt:
        return "ok" if kind == "interrupt" else "unexpected KeyboardInterrupt"
    except RunnerError as err:
        return "ok" if kind == "bad-config" and "bogus_field" in str(err) else f"unexpected error: {err}"
    finally:
        envoy_runner._send = real_send
        envoy_runner.render_bootstrap = real_render
    errors = [o.error for o in run.observations]
    if kind == "pass":
        return "ok" if errors == [None] * len(errors) else f"errors: {errors}"
    if kind == "killed":
        return "ok" if errors[0] is None and all(e and "Envoy exited" in e for e in errors[1:]) else f"errors: {errors}"
    if kind == "refused":
        return "ok" if errors[-1] and "refused the plugin" in errors[-1] and errors[0] is None else f"errors: {errors}"
    return f"run finished although {kind} was induced"


def docker_settings():
    """(ContainerSettings, client, daemon or None): $DOCKER_HOST if it answers, else a private dockerd."""
    from filterkit.engine import DockerDaemon, default_docker_host, docker_client, engine_answers
    from filterkit.envoy.container import ContainerSettings
    from filterkit.envoy.image import build_image

    daemon = None
    host = default_docker_host()
    if not (host and engine_answers(host)):
        daemon = DockerDaemon(Path(tempfile.mkdtemp(prefix="fk-dockerd-", dir="/tmp")))  # short socket path
        try:
            daemon.start()
        except BaseException:
            daemon.remove()
            raise
        host = daemon.host
    client = docker_client(host)
    built = build_image(DEFAULT_ENVOY_VERSION, client=client)
    print(f"docker: {host}, image {built.tag} built in {built.seconds:.1f}s")
    return ContainerSettings(image=built.tag, docker_host=host, pull=False), client, daemon


def stress(args, wasm: Path, folder: Path) -> int:
    tracker = Tracker()
    spec = load_spec(spec_file(folder, 3))
    refused_spec = load_spec(spec_file(folder, 2, refused=True))
    settings = client = daemon = None
    if args.docker:
        settings, client, daemon = docker_settings()
    threads_before = threading.active_count()
    problems: list[str] = []
    counts = {"local": 0, "docker": 0}
    started = time.monotonic()
    try:
        for i in range(args.runs):
            kind = KINDS[i % len(KINDS)]
            container = settings if args.docker and (i // len(KINDS)) % 2 == 1 else None
            backend = "docker" if container else "local"
            counts[backend] += 1
            outcome = one_run(kind, spec, refused_spec, wasm, tracker, container)
            if outcome != "ok":
                problems.append(f"run {i + 1} ({backend}, {kind}): {outcome}")
            if args.verbose:
                print(f"run {i + 1:3d} {backend:6s} {kind:10s} {outcome}")
        seconds = time.monotonic() - started
        time.sleep(0.2)
        pids = envoy_pids()
        ports = [p for p in set(tracker.ports) if port_open(p)]
        tmpdirs = leftover_tempdirs()
        containers = []
        if client is not None:
            from filterkit.engine import filterkit_containers

            containers = [c.short_id for c in filterkit_containers(client)]
        threads = threading.active_count() - threads_before
    finally:
        if daemon is not None:
            daemon.remove()
    leftovers = len(pids) + len(ports) + len(tmpdirs) + len(containers) + max(threads, 0)
    print(f"runs={args.runs} (local {counts['local']}, docker {counts['docker']}; kinds: {', '.join(KINDS)}) "
          f"seconds={seconds:.1f} ({seconds / args.runs:.2f} s/run)")
    print(f"leftovers={leftovers}: envoy processes {pids}, open upstream ports {ports}, temp folders {tmpdirs}, "
          f"containers {containers}, extra threads {threads}")
    if not tracker.seen_running:
        problems.append("the leftover check never saw a running Envoy process: it would miss leftovers")
    for problem in problems:
        print("PROBLEM", problem)
    print(f"unexpected outcomes={len(problems)}")
    return 1 if leftovers or problems else 0


def timing(args, wasm: Path, folder: Path) -> int:
    spec = load_spec(spec_file(folder, 20))
    backends = [("local", None)]
    daemon = None
    if args.docker:
        settings, _client, daemon = docker_settings()
        backends.append(("docker", settings))
    try:
        for name, container in backends:
            totals, startups = [], []
            for _ in range(args.repeat):
                t = time.monotonic()
                run = envoy_runner.run_envoy(spec, wasm, default_config="default-config", root_id="fixture-root",
                                             name="fixture", version=DEFAULT_ENVOY_VERSION, container=container)
                totals.append(time.monotonic() - t)
                startups.append(run.startup_seconds)
                assert all(o.error is None for o in run.observations), [o.error for o in run.observations]
            totals.sort()
            startups.sort()
            print(f"{name}: 20-case spec incl. Envoy start/stop: median {totals[len(totals) // 2]:.3f}s "
                  f"(min {totals[0]:.3f}, max {totals[-1]:.3f}); Envoy startup to /ready: median "
                  f"{startups[len(startups) // 2]:.3f}s (min {startups[0]:.3f}, max {startups[-1]:.3f}); n={args.repeat}")
    finally:
        if daemon is not None:
            daemon.remove()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--docker", action="store_true", help="also run in containers")
    parser.add_argument("--timing", action="store_true", help="time a 20-case spec instead of stressing")
    parser.add_argument("--repeat", type=int, default=5, help="--timing: runs per backend")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    import wasmtime

    with tempfile.TemporaryDirectory(prefix="fk-stress-") as tmp:
        folder = Path(tmp)
        wasm = folder / "fixture.wasm"
        wasm.write_bytes(wasmtime.wat2wasm(FIXTURE.read_text()))
        return timing(args, wasm, folder) if args.timing else stress(args, wasm, folder)


if __name__ == "__main__":
    sys.exit(main())

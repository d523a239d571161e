#!/usr/bin/env python3
"""Throughput of filterkit's in-process proxy-wasm host (prints figures; asserts nothing).

    python benchmarks/host_throughput.py                 # scaffolds + builds the reference filter
    python benchmarks/host_throughput.py build/x.wasm --config '{"deny": []}' --root-id x
    python benchmarks/host_throughput.py --profile       # cProfile of the lifecycle loop

Reference filter: the AssemblyScript template (`python -m filterkit new` + `build` in a temporary
folder). Figures:

- module load: cold (compiled by wasmtime), from the disk cache (a new process would do this), and
  warm (already compiled in this process);
- lifecycles/s: whole HTTP streams (context create, request headers, response headers + body, log,
  done, delete) on one VM, allowed and denied requests;
- a 1,000-case spec on the host: parse, run, judge (warm module cache);
- linear memory growth per request.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from filterkit.host import PluginHost, run_spec  # noqa: E402
from filterkit.host import cache as module_cache  # noqa: E402
from filterkit.host.vm import compiled_module, forget_compiled_modules  # noqa: E402
from filterkit.spec import UpstreamAnswer, load_spec  # noqa: E402
from filterkit.verdict import judge  # noqa: E402

REFERENCE_CONFIG = ('{"deny":[{"name":"blocked-by-header","header":"x-block","value":"1"},'
                    '{"name":"admin-area","path_prefix":"/admin"}],"deny_status":403}')


def reference_filter(workdir: Path) -> tuple[Path, str, str]:
    project = workdir / "policy"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["new", "policy", "--dir", str(project)], ["build", str(project)]):
        done = subprocess.run([sys.executable, "-m", "filterkit", *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"filterkit {args[0]} failed:\n{done.stdout}{done.stderr}")
    return project / "build" / "policy.wasm", REFERENCE_CONFIG, "policy"


def headers(path: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [(":authority", "shop.example"), (":path", path), (":method", "GET"), (":scheme", "http"),
            ("user-agent", "bench"), ("x-request-id", "8d1c4f52-4c4e-4d0e-9c1e-0d5d0f6f2b11"), *extra]


def module_load(wasm: Path) -> None:
    with tempfile.TemporaryDirectory() as cache_home:
        os.environ["FILTERKIT_CACHE"] = cache_home
        forget_compiled_modules()
        cold = compiled_module(wasm)
        forget_compiled_modules()
        cached = compiled_module(wasm)
        started = time.perf_counter()
        compiled_module(wasm)
        warm = time.perf_counter() - started
        entry = module_cache.entry_path(cold.sha256, "consume_fuel=1")
        print(f"module load   cold (compile):     {cold.load_seconds * 1000:8.1f} ms  [{cold.source}]")
        print(f"              disk cache:         {cached.load_seconds * 1000:8.1f} ms  [{cached.source}, "
              f"{entry.stat().st_size // 1024} KiB entry]")
        print(f"              warm (in process):  {warm * 1000:8.3f} ms")
        started = time.perf_counter()
        host = PluginHost(wasm, root_id="x", plugin_config=REFERENCE_CONFIG)
        host.start()
        print(f"              VM start + plugin:  {(time.perf_counter() - started) * 1000:8.1f} ms")
        host.shutdown()
        del os.environ["FILTERKIT_CACHE"]


def lifecycles(wasm: Path, config: str, root_id: str, seconds: float, profile: bool) -> None:
    host = PluginHost(wasm, plugin_config=config, root_id=root_id, log_level="info")
    host.start()
    upstream = UpstreamAnswer(200, (("content-type", "text/plain"),), b"ok")
    for label, request in (("allowed", headers("/orders")), ("denied ", headers("/admin/users"))):
        for _ in range(300):
            host.http_stream().exchange(request, b"", upstream)
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for _ in range(200):
                obs = host.http_stream().exchange(request, b"", upstream)
            count += 200
            if obs.error:
                sys.exit(f"the filter failed: {obs.error}")
        elapsed = time.perf_counter() - started
        print(f"lifecycles/s  {label}:            {count / elapsed:8.0f}  ({count} streams in {elapsed:.2f} s, "
              f"{elapsed / count * 1e6:.0f} µs each)")
    if profile:
        request = headers("/orders")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(3000):
            host.http_stream().exchange(request, b"", upstream)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    print(f"memory        growth per request: {host.memory_growth_per_request(2000):8.1f} bytes "
          f"(linear memory {host.memory_size // 1024} KiB)")
    host.shutdown()


def thousand_cases(wasm: Path, config: str, root_id: str) -> None:
    lines = ["cases:"]
    for i in range(1000):
        if i % 4 == 3:
            lines += [f"  - name: denied {i}", "    request: {path: /admin/x, headers: {x-block: \"1\"}}",
                      "    expect:", "      response: {status: 403}", "      upstream: {called: false}"]
        else:
            lines += [f"  - name: allowed {i}", f"    request: {{path: /orders/{i}}}",
                      "    upstream: {status: 200, headers: {content-type: text/plain}, body: ok}",
                      "    expect:", "      response: {status: 200, body: ok}"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text("\n".join(lines) + "\n")
        started = time.perf_counter()
        spec = load_spec(path)
        parsed = time.perf_counter()
        run = run_spec(spec, wasm, default_config=config, root_id=root_id, log_level="info")
        ran = time.perf_counter()
        results = [judge(c, "host", o) for c, o in zip(spec.cases, run.observations)]
        judged = time.perf_counter()
    failed = sum(not r.passed for r in results)
    print(f"1,000 cases   total:              {(judged - started) * 1000:8.0f} ms  (parse {(parsed - started) * 1000:.0f}"
          f" ms, run {(ran - parsed) * 1000:.0f} ms, judge {(judged - ran) * 1000:.0f} ms; {failed} failed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wasm", nargs="?", type=Path, help="a filter module (default: build the reference filter)")
    parser.add_argument("--config", default=REFERENCE_CONFIG, help="plugin configuration (with a module path)")
    parser.add_argument("--root-id", default="policy")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per lifecycle measurement")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the lifecycle loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="filterkit-bench-") as workdir:
        if args.wasm is None:
            print("building the reference AssemblyScript filter …", flush=True)
            wasm, config, root_id = reference_filter(Path(workdir))
        else:
            wasm, config, root_id = args.wasm, args.config, args.root_id
        print(f"module {wasm.name}: {wasm.stat().st_size // 1024} KiB; python {sys.version.split()[0]}, "
              f"{os.cpu_count()} cpu(s)")
        module_load(wasm)
        lifecycles(wasm, config, root_id, args.seconds, args.profile)
        thousand_cases(wasm, config, root_id)


if __name__ == "__main__":
    main()

"""Rust: ``cargo build`` of the project's ``cdylib`` for a wasm target, copied to ``build/<name>.wasm``.

Finding a toolchain, in this order (the first that can build wins):

1. ``CARGO`` / ``RUSTC`` from the environment, when set: then only that toolchain is considered;
2. ``cargo`` / ``rustc`` on ``PATH`` (rustup's proxies, which honour ``rust-toolchain.toml``);
3. known install locations: ``/usr/bin`` (Debian's ``rustc-web``/``cargo-web``, or ``rustc``/``cargo``),
   ``/usr/lib/rust-web/bin``, ``/usr/local/bin``, ``~/.cargo/bin``, ``/usr/local/cargo/bin``.

A toolchain can build in one of two modes:

- **prebuilt**: its sysroot has the standard library for a wasm target (``rustup target add
  wasm32-wasip1``); targets tried: ``wasm32-wasip1``, ``wasm32-wasi`` (Rust < 1.78),
  ``wasm32-unknown-unknown``;
- **build-std**: it has the standard library's sources (``lib/rustlib/src/rust/library``, e.g. Debian's
  ``rust-web-src``) and cargo builds std for the target as part of the build (``RUSTC_BOOTSTRAP=1
  cargo build -Zbuild-std=std,panic_abort``). ``wasm32-wasip1`` then links against a system wasi-libc
  (Debian ``wasi-libc``); without one the target is ``wasm32-unknown-unknown``.

Every toolchain is first tried for prebuilt mode, then (unless turned off) for build-std mode.
``build: {rust_build_std: true|false}`` in filterkit.yaml or ``FILTERKIT_RUST_BUILD_STD=1|0`` (which
wins) forces or forbids build-std mode. The build says which toolchain, target and mode it used.

Cargo itself reads ``CARGO_TARGET_DIR``, ``CARGO_HOME``, ``CARGO_NET_OFFLINE`` and the project's
``.cargo/config.toml`` (vendored or directory sources, registry mirrors): filterkit passes the
environment through and runs cargo in the project folder. Its own additions go through ``--config``
(merged with the project's configuration) or, when ``RUSTFLAGS`` is set, appended to it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..errors import ToolchainError
from .common import BuildError, files, tail
from .wasmopt import find_wasm_opt, optimize_wasm

WASM_TARGETS = ("wasm32-wasip1", "wasm32-wasi", "wasm32-unknown-unknown")
WASI_TARGETS = ("wasm32-wasip1", "wasm32-wasi")
ADD_TARGET = "rustup target add wasm32-wasip1"
DEBIAN_PACKAGES = "rustc-web cargo-web rust-web-src wasi-libc lld-22"
KNOWN_BIN_DIRS = ("/usr/bin", "/usr/lib/rust-web/bin", "/usr/local/bin", "~/.cargo/bin", "/usr/local/cargo/bin")
# Where a system wasi-libc keeps libc.a for wasm32-wasi(p1) (Debian: wasi-libc → /usr/lib/wasm32-wasi).
WASI_LIBC_DIRS = ("/usr/lib/wasm32-wasip1", "/usr/lib/wasm32-wasi", "/usr/share/wasi-sysroot/lib/wasm32-wasip1",
                  "/usr/share/wasi-sysroot/lib/wasm32-wasi", "/opt/wasi-sdk/share/wasi-sysroot/lib/wasm32-wasip1",
                  "/opt/wasi-sdk/share/wasi-sysroot/lib/wasm32-wasi")
BUILD_STD_ENV = "FILTERKIT_RUST_BUILD_STD"
# Environment that changes what gets built (part of the build fingerprint).
FINGERPRINT_ENV = ("CARGO", "RUSTC", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTUP_TOOLCHAIN", BUILD_STD_ENV,
                   "WASI_SYSROOT", "WASM_OPT")
NETWORK_ERRORS = ("failed to download", "failed to get", "failed to load source", "unable to update",
                  "failed to fetch", "failed to query replaced source", "--offline", "network failure",
                  "spurious network error", "could not resolve host", "failed to select a version")


@dataclass
class Toolchain:
    cargo: Path
    rustc: Path
    origin: str  # how it was found: "CARGO/RUSTC", "PATH", "/usr/bin"
    cwd: Path
    problem: str | None = None  # why it cannot be used at all (rustc would not run …)

    @cached_property
    def _version_info(self) -> dict[str, str]:
        result = _probe([str(self.rustc), "-vV"], self.cwd)
        if result is None:
            return {}
        info = {}
        for line in result.splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
        info["banner"] = result.splitlines()[0] if result.strip() else ""
        return info

    @property
    def version(self) -> str:
        return self._version_info.get("release", "?")

    @property
    def banner(self) -> str:
        return self._version_info.get("banner", "rustc ?")

    @property
    def host(self) -> str:
        return self._version_info.get("host", "")

    @property
    def llvm_major(self) -> str | None:
        match = re.match(r"(\d+)", self._version_info.get("LLVM version", ""))
        return match.group(1) if match else None

    @cached_property
    def _prints(self) -> tuple[Path | None, frozenset[str]]:
        out = _probe([str(self.rustc), "--print", "sysroot", "--print", "target-list"], self.cwd)
        if not out:
            return None, frozenset()
        lines = out.splitlines()
        return Path(lines[0].strip()), frozenset(line.strip() for line in lines[1:] if line.strip())

    @property
    def sysroot(self) -> Path | None:
        return self._prints[0]

    @property
    def targets(self) -> frozenset[str]:
        return self._prints[1]

    @property
    def usable(self) -> bool:
        if self.problem is None and not self._version_info:
            self.problem = f"{self.rustc} -vV failed"
        return self.problem is None

    def has_prebuilt_std(self, target: str) -> bool:
        if self.sysroot is None:
            return False
        lib = self.sysroot / "lib" / "rustlib" / target / "lib"
        return any(lib.glob("libstd-*.rlib"))

    @property
    def std_sources(self) -> Path | None:
        if self.sysroot is None:
            return None
        library = self.sysroot / "lib" / "rustlib" / "src" / "rust" / "library"
        return library if (library / "std" / "Cargo.toml").is_file() else None

    def label(self) -> str:
        return f"{self.banner} at {self.rustc} (cargo {self.cargo}; found {self.origin})"

    def short(self) -> str:
        return f"rustc {self.version} ({self.rustc})"


@dataclass
class Plan:
    toolchain: Toolchain
    target: str
    build_std: bool
    linker: Path | None = None  # a wasm-ld to use instead of rust-lld
    rustflags: list[str] = field(default_factory=list)
    why: str = ""

    def describe(self) -> str:
        mode = "build-std (the standard library is built from source)" if self.build_std else "prebuilt std"
        text = f"rust: {self.toolchain.label()}, target {self.target}, {mode}"
        return text + (f"; {self.why}" if self.why else "")


class RustBuilder:
    sources = ("src/**/*", "Cargo.toml", "Cargo.lock", "build.rs", ".cargo/config.toml", ".cargo/config",
               "rust-toolchain.toml", "rust-toolchain")

    def inputs(self, root: Path) -> list[Path]:
        return files(root, self.sources)

    def settings(self, project) -> str:
        env = "\n".join(f"{name}={os.environ.get(name, '')}" for name in FINGERPRINT_ENV)
        wasm_opt = project.build.wasm_opt and project.build.optimize and find_wasm_opt() is not None
        return f"{env}\nwasm-opt={wasm_opt}"

    def compile(self, project, out: Path, log) -> dict:
        root = project.root
        plan = plan_build(root, build_std_setting(project))
        log(plan.describe())
        cmd, env = _cargo_command(plan, project)
        if plan.build_std:
            log(f"running: RUSTC_BOOTSTRAP=1 {shlex.join(cmd)} (the first build also compiles std: 30-60 s)")
        else:
            log(f"running: {shlex.join(cmd)}")
        try:
            result = _run_cargo(cmd, root, env, log)
        except OSError as err:
            raise ToolchainError(f"cannot run {plan.toolchain.cargo}: {err.strerror}") from None
        artifact, errors, warnings = parse_cargo_messages(result.stdout, root / "Cargo.toml")
        if result.returncode != 0 or artifact is None:
            std_sources = plan.toolchain.std_sources if plan.build_std else None
            raise_cargo_failure(project, result.returncode, result.stderr, errors, plan.toolchain.short(),
                                vendor_std=f"cargo vendor -s {std_sources / 'Cargo.toml'} vendor" if std_sources else None)
        if warnings:
            log(f"rust: {len(warnings)} compiler warning(s); run 'cargo build' in {root} to see them")
        shutil.copyfile(artifact, out)
        return finish_module(project, out, log, {"toolchain": plan.toolchain.short(), "target": plan.target,
                                                 "mode": "build-std" if plan.build_std else "prebuilt"})


def _run_cargo(cmd: list[str], cwd: Path, env: dict[str, str], log) -> subprocess.CompletedProcess:
    """Run cargo with its progress (stderr: Compiling …, Downloaded …) shown line by line as it comes;
    stdout (the JSON messages) is collected for parsing. A child that outlives an interrupt is killed."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()), daemon=True)
    reader.start()
    stderr: list[str] = []
    try:
        for line in proc.stderr:
            stderr.append(line)
            if line.strip():
                log(f"  {line.strip()}")
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(stdout), "".join(stderr))


def finish_module(project, out: Path, log, details: dict) -> dict:
    """The optional wasm-opt step on the built module ``out``; the build's details for its stamp."""
    if project.build.wasm_opt and project.build.optimize:  # a debug build keeps its names as built
        optimized = optimize_wasm(out, log)
        if optimized:
            details["wasm_opt"] = optimized
    return details


# --------------------------------------------------------------------------------------------------
# finding a toolchain


def _probe(cmd: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _executable(path: str | Path | None) -> Path | None:
    if not path:
        return None
    p = Path(path).expanduser()
    if p.is_file() and os.access(p, os.X_OK):
        return p
    found = shutil.which(str(path))
    return Path(found) if found else None


def candidate_toolchains(cwd: Path) -> list[Toolchain]:
    """Toolchains in the order filterkit tries them (see the module docstring)."""
    env_cargo, env_rustc = os.environ.get("CARGO"), os.environ.get("RUSTC")
    if env_cargo or env_rustc:
        rustc = _executable(env_rustc) if env_rustc else None
        cargo = _executable(env_cargo) if env_cargo else None
        if env_rustc and rustc is None:
            return [Toolchain(Path(env_rustc), Path(env_rustc), "RUSTC", cwd, problem=f"RUSTC={env_rustc} is not an executable")]
        if env_cargo and cargo is None:
            return [Toolchain(Path(env_cargo), Path(env_cargo), "CARGO", cwd, problem=f"CARGO={env_cargo} is not an executable")]
        # The missing half: next to the given one, else from PATH.
        if rustc is None:
            rustc = _executable(cargo.parent / "rustc") or _executable("rustc")
        if cargo is None:
            cargo = _executable(rustc.parent / "cargo") or _executable("cargo")
        origin = "from " + ("CARGO/RUSTC" if env_cargo and env_rustc else ("CARGO" if env_cargo else "RUSTC"))
        if rustc is None or cargo is None:
            missing = "rustc" if rustc is None else "cargo"
            return [Toolchain(cargo or Path("cargo"), rustc or Path("rustc"), origin, cwd,
                              problem=f"{missing} not found next to {origin} or on PATH")]
        return [Toolchain(cargo, rustc, origin, cwd)]
    found: list[Toolchain] = []
    seen: set[str] = set()

    def add(cargo: Path | None, rustc: Path | None, origin: str) -> None:
        if cargo is None or rustc is None:
            return
        key = str(rustc.resolve())
        # rustup's proxies all resolve to the rustup binary: tell them apart by path instead.
        if rustc.resolve().name in ("rustup", "rustup-init"):
            key = str(rustc)
        if key in seen:
            return
        seen.add(key)
        found.append(Toolchain(cargo, rustc, origin, cwd))

    add(_executable(shutil.which("cargo")), _executable(shutil.which("rustc")), "on PATH")
    for directory in KNOWN_BIN_DIRS:
        d = Path(directory).expanduser()
        add(_executable(d / "cargo"), _executable(d / "rustc"), f"in {directory}")
    return found


def build_std_setting(project) -> bool | None:
    """build-std forced (True), forbidden (False) or chosen when needed (None): the environment wins."""
    value = os.environ.get(BUILD_STD_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return project.build.rust_build_std


def plan_build(root: Path, build_std: bool | None) -> Plan:
    """Choose toolchain, target and mode, or raise ToolchainError saying how to get one."""
    candidates = candidate_toolchains(root)
    usable = [tc for tc in candidates if tc.usable]
    if not usable:
        problems = "; ".join(tc.problem for tc in candidates if tc.problem)
        raise ToolchainError("no Rust toolchain found" + (f" ({problems})" if problems else "") +
                             f": install Rust from https://rustup.rs, then run '{ADD_TARGET}' (or build in a "
                             "container: 'filterkit build --in-container')")
    skipped: list[str] = []
    if build_std is not True:
        for tc in usable:
            target = next((t for t in WASM_TARGETS if t in tc.targets and tc.has_prebuilt_std(t)), None)
            if target is not None:
                why = ("; ".join(skipped) + ": no wasm target") if skipped else ""
                return _with_linker(Plan(tc, target, False, why=why))
            skipped.append(tc.short())
    if build_std is not False:
        for tc in usable:
            if tc.std_sources is None:
                continue
            plan = _build_std_plan(tc)
            if plan is not None:
                if build_std is None:
                    plan.why = f"no toolchain has a prebuilt wasm std ({', '.join(skipped)})"
                else:
                    plan.why = "build-std requested"
                return _with_linker(plan)
    first = usable[0]
    wasi = "wasm32-wasip1" if "wasm32-wasip1" in first.targets or not first.targets else (
        "wasm32-wasi" if "wasm32-wasi" in first.targets else "wasm32-unknown-unknown")
    tried = ", ".join(tc.short() for tc in usable)
    if build_std is True:
        raise ToolchainError(f"build-std was requested but no toolchain has the standard library's sources "
                             f"(tried {tried}): run 'rustup component add rust-src' (or on Debian: apt-get "
                             f"install {DEBIAN_PACKAGES}), or drop rust_build_std/{BUILD_STD_ENV}")
    raise ToolchainError(f"no Rust wasm target installed (tried {tried}): run 'rustup target add {wasi}' "
                         f"(without rustup, on Debian 12: apt-get install {DEBIAN_PACKAGES}; or build in a "
                         "container: 'filterkit build --in-container')")


def _build_std_plan(tc: Toolchain) -> Plan | None:
    for target in WASI_TARGETS:
        if target in tc.targets:
            libc = _wasi_libc_dir(tc, target)
            if libc is not None:
                flags = [] if libc == "self-contained" else ["-L", f"native={libc}"]
                return Plan(tc, target, True, rustflags=flags)
            break
    if "wasm32-unknown-unknown" in tc.targets:
        return Plan(tc, "wasm32-unknown-unknown", True)
    return None


def _wasi_libc_dir(tc: Toolchain, target: str) -> str | None:
    if tc.sysroot is not None and (tc.sysroot / "lib" / "rustlib" / target / "lib" / "self-contained" / "libc.a").is_file():
        return "self-contained"
    dirs = []
    if os.environ.get("WASI_SYSROOT"):
        base = Path(os.environ["WASI_SYSROOT"]) / "lib"
        dirs += [base / "wasm32-wasip1", base / "wasm32-wasi"]
    dirs += [Path(d) for d in WASI_LIBC_DIRS]
    for d in dirs:
        if (d / "libc.a").is_file():
            return str(d)
    return None


def _with_linker(plan: Plan) -> Plan:
    """rustc links wasm with ``rust-lld`` (from its sysroot, else PATH). When that is missing or a
    dangling link (Debian's rust-web-llvm without lld-NN), use a ``wasm-ld`` of the same LLVM."""
    tc = plan.toolchain
    if tc.sysroot is not None and tc.host:
        bundled = tc.sysroot / "lib" / "rustlib" / tc.host / "bin" / "rust-lld"
        if bundled.exists():
            return plan
    on_path = shutil.which("rust-lld")
    if on_path and Path(on_path).exists():
        return plan
    major = tc.llvm_major
    names = ([f"wasm-ld-{major}", f"/usr/lib/llvm-{major}/bin/wasm-ld"] if major else []) + ["wasm-ld"]
    for name in names:
        linker = _executable(name)
        if linker is not None:
            plan.linker = linker
            return plan
    package = f"lld-{major}" if major else "lld"
    raise ToolchainError(f"no wasm linker for {tc.short()}: rust-lld is missing (LLVM {major or '?'}); "
                         f"install it (Debian: apt-get install {package}) or put a wasm-ld on PATH")


# --------------------------------------------------------------------------------------------------
# running cargo


def _cargo_command(plan: Plan, project) -> tuple[list[str], dict[str, str]]:
    tc = plan.toolchain
    cmd = [str(tc.cargo), "build", "--lib", "--target", plan.target, "--message-format=json"]
    if project.build.optimize:
        cmd.append("--release")
    env = dict(os.environ)
    env["RUSTC"] = str(tc.rustc)  # else a cargo from one toolchain runs the rustc first on PATH
    if plan.build_std:
        env["RUSTC_BOOTSTRAP"] = "1"
        cmd.append("-Zbuild-std=std,panic_abort")
    if plan.linker is not None:
        key = plan.target.upper().replace("-", "_")
        env[f"CARGO_TARGET_{key}_LINKER"] = str(plan.linker)
    if plan.rustflags:
        if env.get("CARGO_ENCODED_RUSTFLAGS"):
            env["CARGO_ENCODED_RUSTFLAGS"] += "\x1f" + "\x1f".join(plan.rustflags)
        elif env.get("RUSTFLAGS"):
            env["RUSTFLAGS"] += " " + " ".join(plan.rustflags)
        else:
            cmd += ["--config", f"target.{plan.target}.rustflags={json.dumps(plan.rustflags)}"]
    return cmd, env


def parse_cargo_messages(stdout: str, manifest: Path) -> tuple[Path | None, list[dict], list[dict]]:
    """From cargo's ``--message-format=json`` output: the .wasm artifact of the package whose
    Cargo.toml is ``manifest``, and the compiler's error and warning messages."""
    artifact = None
    errors: list[dict] = []
    warnings: list[dict] = []
    manifest = manifest.resolve()
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        reason = msg.get("reason")
        if reason == "compiler-artifact":
            wasm = [f for f in msg.get("filenames", []) if f.endswith(".wasm")]
            mine = Path(msg.get("manifest_path", "")).resolve() == manifest
            if wasm and (mine or artifact is None):
                artifact = Path(wasm[0])
        elif reason == "compiler-message":
            message = msg.get("message") or {}
            level = message.get("level", "")
            if level.startswith("error"):
                errors.append(message)
            elif level == "warning":
                warnings.append(message)
    return artifact, errors, warnings


def _location(message: dict) -> str:
    for span in message.get("spans") or []:
        if span.get("is_primary"):
            return f"{span.get('file_name')}:{span.get('line_start')}:{span.get('column_start')}: "
    return ""


def raise_cargo_failure(project, returncode: int, stderr: str, errors: list[dict], toolchain: str, *,
                        vendor_std: str | None = None, fetch_hint: str = "check registry access"):
    """The error for a failed cargo build: ``BuildError`` with the compiler's first error (file:line)
    for the user's code; ``ToolchainError`` when cargo could not fetch what it needs (``fetch_hint``
    says what to check; ``vendor_std``: the command that vendors std's own dependencies in build-std mode)."""
    # "aborting due to N previous errors" carries no information of its own.
    real = [m for m in errors if not str(m.get("message", "")).startswith("aborting due to")]
    if real:
        first = real[0]
        summary = (f"cargo failed to compile {project.name}: {len(real)} error(s), first at "
                   f"{_location(first)}{first.get('message', '')}")
        diagnostics = "\n".join((m.get("rendered") or m.get("message", "")).rstrip() for m in real)
        raise BuildError(summary, diagnostics)
    lines = [line for line in stderr.splitlines()
             if not re.match(r"\s*(Compiling|Downloading|Downloaded|Updating|Locking|Blocking|Adding|Fresh|Checking)\b",
                             line)]
    first_error = next((line.strip() for line in lines if line.startswith("error")), "")
    text = "\n".join(lines).strip()
    if returncode == 0:
        raise BuildError(f"cargo built {project.name} but produced no .wasm: is crate-type = [\"cdylib\"] "
                         f"set in Cargo.toml's [lib]?", tail(text))
    if any(marker in text.lower() for marker in NETWORK_ERRORS):
        hint = (f"{fetch_hint}, or vendor the dependencies ('cargo vendor', a directory source in "
                ".cargo/config.toml) and build with CARGO_NET_OFFLINE=true")
        if vendor_std:
            hint += f"; in build-std mode the standard library's dependencies are needed too: '{vendor_std}'"
        raise ToolchainError(f"cargo could not fetch what the build of {project.name} needs ({toolchain}): "
                             f"{_one_line(first_error or tail(text, 3))} ({hint})")
    raise BuildError(f"cargo failed for {project.name}: {first_error or 'exit code ' + str(returncode)}",
                     tail(text, 40))


def _one_line(text: str) -> str:
    return " | ".join(part.strip() for part in text.splitlines() if part.strip())


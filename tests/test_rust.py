"""The Rust template and build, for real: `filterkit new --lang rust` → build → spec on host and Envoy.

Needs a Rust toolchain that can build wasm: rustup with `rustup target add wasm32-wasip1`, or (build-std
mode) Debian's rustc-web, cargo-web, rust-web-src, wasi-libc and lld-22. Cargo's target folder is
shared under the repository's .cache/ so that only the first run pays for the cold build (~30-40 s
with the standard library).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import REPO, require, run_filterkit, run_project_pytest

TARGET_DIR = REPO / ".cache" / "rust-target"


@contextmanager
def environment(**values: str | None):
    """run_filterkit passes os.environ to the child: set (or, with None, unset) variables around a call."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in values.items():
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, value)
        yield


def rust(*args, **env):
    with environment(CARGO_TARGET_DIR=str(TARGET_DIR), **env):
        return run_filterkit(*args)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spec_cases(root: Path) -> int:
    return len(yaml.safe_load((root / "tests" / "spec.yaml").read_text())["cases"])


@pytest.fixture(scope="session")
def rust_toolchain() -> str:
    """Skip (locally) or fail (CI) unless some Rust toolchain can build wasm; says which is missing."""
    from filterkit.build.rust import plan_build
    from filterkit.errors import ToolchainError

    try:
        plan = plan_build(REPO, None)
    except ToolchainError as err:
        require("a Rust toolchain for wasm", False, str(err))
    return plan.describe()


@pytest.fixture(scope="session")
def rust_project(rust_toolchain, tmp_path_factory) -> tuple[Path, dict]:
    """The scaffolded Rust filter, built once (cold), then built again (no-op)."""
    root = tmp_path_factory.mktemp("rust") / "policy"
    made = run_filterkit("new", "policy", "--lang", "rust", "--dir", root)
    assert made.returncode == 0, made.stderr
    TARGET_DIR.mkdir(parents=True, exist_ok=True)
    cold = rust("build", root)
    assert cold.returncode == 0, cold.stdout + cold.stderr
    again = rust("build", root)
    return root, {"cold": cold, "again": again}


def test_new_rust_project_has_the_template_files(tmp_path):
    root = tmp_path / "demo"
    result = run_filterkit("new", "demo", "--lang", "rust", "--dir", root)
    assert result.returncode == 0, result.stderr
    for name in ("Cargo.toml", "Cargo.lock", "src/lib.rs", "filterkit.yaml", "tests/spec.yaml", ".gitignore",
                 "README.md", ".github/workflows/filter.yml"):
        assert (root / name).is_file(), name
    cargo = (root / "Cargo.toml").read_text()
    assert 'name = "demo"' in cargo and 'crate-type = ["cdylib"]' in cargo and 'proxy-wasm = "0.2"' in cargo
    assert 'name = "demo"' in (root / "Cargo.lock").read_text()
    assert 'const FILTER_NAME: &str = "demo";' in (root / "src" / "lib.rs").read_text()
    assert (root / ".gitignore").read_text().split() == ["target/", "build/"]
    workflow = yaml.safe_load((root / ".github/workflows/filter.yml").read_text())
    runs = " ".join(str(step.get("run", "")) for job in workflow["jobs"].values() for step in job["steps"])
    assert "rustup target add wasm32-wasip1" in runs and "filterkit build" in runs and "--junit build/junit.xml" in runs
    assert "${{ github.run_id }}" in (root / ".github/workflows/filter.yml").read_text()


def test_rust_and_assemblyscript_projects_get_the_same_tests(tmp_path):
    """Same behaviour, same test cases: the spec file and the pytest unit tests of both languages are
    rendered from templates/common/, and nothing of a language template overrides them."""
    made = {lang: tmp_path / lang for lang in ("rust", "assemblyscript")}
    for lang, root in made.items():
        assert run_filterkit("new", "same", "--lang", lang, "--dir", root).returncode == 0
    for rel in ("tests/spec.yaml", "tests/test_filter.py"):
        assert (made["rust"] / rel).read_text() == (made["assemblyscript"] / rel).read_text()
    assert not list((REPO / "templates" / "rust").rglob("tests/*"))
    assert not list((REPO / "templates" / "assemblyscript").rglob("tests/*"))


def test_cold_build_then_up_to_date(rust_project):
    root, runs = rust_project
    wasm = root / "build" / "policy.wasm"
    assert wasm.read_bytes()[:4] == b"\0asm"
    assert (root / "build" / "policy.wasm.sha256").read_text() == f"{sha256(wasm)}  policy.wasm\n"
    assert "rust: rustc " in runs["cold"].stderr and ", target wasm32-" in runs["cold"].stderr
    assert runs["again"].returncode == 0 and "up to date" in runs["again"].stderr
    assert "cargo" not in runs["again"].stderr  # nothing was run


def test_template_spec_passes_on_the_host(rust_project):
    root, _ = rust_project
    result = rust("test", root, "--target", "host")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{spec_cases(root)} passed, 0 failed"


def test_generated_project_runs_its_pytest_tests_with_the_plugin(rust_project):
    done = run_project_pytest(rust_project[0])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 passed" in done.stdout


@pytest.mark.envoy
def test_template_spec_passes_on_envoy_with_the_lifecycle_checks(rust_project):
    from filterkit.envoy.binary import envoy_binary
    from filterkit.errors import ToolchainError
    from filterkit.project import DEFAULT_ENVOY_VERSION

    try:
        envoy_binary(DEFAULT_ENVOY_VERSION)
    except ToolchainError as err:
        require(f"Envoy {DEFAULT_ENVOY_VERSION}", False, str(err))
    root, _ = rust_project
    # Both targets (and their fidelity comparison) plus the Envoy lifecycle checks, as the template's CI runs.
    result = rust("test", root, "--target", "all", "--checks")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{2 * spec_cases(root)} passed, 0 failed" in result.stdout


@pytest.fixture
def copy_of(rust_project, tmp_path):
    root, _ = rust_project
    copy = tmp_path / "policy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("target"))
    return copy


def test_compile_error_shows_file_line_and_keeps_the_module(copy_of):
    wasm = copy_of / "build" / "policy.wasm"
    before = sha256(wasm)
    source = copy_of / "src" / "lib.rs"
    text = source.read_text()
    line = 'let method = self.request_header(":method");'
    assert text.count(line) == 1
    source.write_text(text.replace(line, 'let method: u32 = self.request_header(":method");'))
    result = rust("build", copy_of)
    assert result.returncode == 1, result.stderr
    lineno = source.read_text().splitlines().index('        let method: u32 = self.request_header(":method");') + 1
    summary = [l for l in result.stderr.splitlines() if l.startswith("error: cargo failed to compile policy")]
    assert summary and f"src/lib.rs:{lineno}:" in summary[0] and "mismatched types" in summary[0]
    assert "error[E0308]: mismatched types" in result.stderr
    assert f"--> src/lib.rs:{lineno}:" in result.stderr
    assert "Traceback" not in result.stderr
    assert sha256(wasm) == before


def test_wasm_opt_failure_keeps_the_unoptimised_module(copy_of, tmp_path):
    broken = tmp_path / "wasm-opt"
    broken.write_text("#!/bin/sh\necho 'wasm-opt: simulated crash' >&2\nexit 3\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    result = rust("build", copy_of, "--force", WASM_OPT=str(broken))
    assert result.returncode == 0, result.stderr
    assert "warning: wasm-opt" in result.stderr and "simulated crash" in result.stderr
    wasm = copy_of / "build" / "policy.wasm"
    assert wasm.read_bytes()[:4] == b"\0asm"
    host = rust("test", copy_of, "--target", "host", "--no-build")
    assert host.returncode == 0, host.stdout


# -------------------------------------------------------------------------------------------------
# toolchain discovery, with fake toolchains (no real Rust needed)


def fake_toolchain(folder: Path, *, targets=("wasm32-wasip1", "wasm32-unknown-unknown", "x86_64-unknown-linux-gnu"),
                   release="1.80.0", std_for=(), sources=False) -> dict[str, str]:
    """A rustc script that answers -vV and --print like a real one, over a sysroot we lay out."""
    sysroot = folder / "sysroot"
    (sysroot / "lib" / "rustlib" / "x86_64-unknown-linux-gnu" / "lib").mkdir(parents=True)
    (sysroot / "lib" / "rustlib" / "x86_64-unknown-linux-gnu" / "bin").mkdir()
    (sysroot / "lib" / "rustlib" / "x86_64-unknown-linux-gnu" / "bin" / "rust-lld").write_bytes(b"")
    for target in std_for:
        lib = sysroot / "lib" / "rustlib" / target / "lib"
        lib.mkdir(parents=True)
        (lib / "libstd-0123456789abcdef.rlib").write_bytes(b"")
    if sources:
        std = sysroot / "lib" / "rustlib" / "src" / "rust" / "library" / "std"
        std.mkdir(parents=True)
        (std / "Cargo.toml").write_text("[package]\nname = \"std\"\n")
    rustc = folder / "rustc"
    rustc.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$*" in
          *-vV*) printf 'rustc {release} (fake 2024-01-01)\\nbinary: rustc\\nhost: x86_64-unknown-linux-gnu\\nrelease: {release}\\nLLVM version: 18.1.7\\n' ;;
          *--print*) echo '{sysroot}'; printf '%s\\n' {' '.join(targets)} ;;
          *) echo "fake rustc: $*" >&2; exit 1 ;;
        esac
        """))
    cargo = folder / "cargo"
    cargo.write_text("#!/bin/sh\necho 'fake cargo must not be run' >&2\nexit 99\n")
    for tool in (rustc, cargo):
        tool.chmod(0o755)
    return {"RUSTC": str(rustc), "CARGO": str(cargo)}


@pytest.fixture
def scaffolded(tmp_path) -> Path:
    root = tmp_path / "x"
    result = run_filterkit("new", "x", "--lang", "rust", "--dir", root)
    assert result.returncode == 0, result.stderr
    return root


def test_no_wasm_target_says_how_to_add_it_in_one_line(scaffolded, tmp_path):
    env = fake_toolchain(tmp_path / "tc")
    with environment(**env, FILTERKIT_RUST_BUILD_STD=None):
        result = run_filterkit("build", scaffolded)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no Rust wasm target installed")
    assert "'rustup target add wasm32-wasip1'" in lines[0] and "rustc 1.80.0" in lines[0]
    assert not (scaffolded / "build" / "x.wasm").exists()


def test_an_old_toolchain_is_told_to_add_wasm32_wasi(scaffolded, tmp_path):
    env = fake_toolchain(tmp_path / "tc", targets=("wasm32-wasi", "wasm32-unknown-unknown"), release="1.75.0")
    with environment(**env, FILTERKIT_RUST_BUILD_STD=None):
        result = run_filterkit("build", scaffolded)
    assert result.returncode == 2
    assert "'rustup target add wasm32-wasi'" in result.stderr


def test_forced_build_std_without_std_sources_says_what_is_missing(scaffolded, tmp_path):
    env = fake_toolchain(tmp_path / "tc")
    with environment(**env, FILTERKIT_RUST_BUILD_STD="1"):
        result = run_filterkit("build", scaffolded)
    assert result.returncode == 2
    assert "build-std was requested" in result.stderr and "rust-src" in result.stderr


def test_toolchain_choice_prefers_prebuilt_then_build_std(tmp_path, monkeypatch):
    """plan_build on fake toolchains: the target order and the automatic build-std fallback."""
    from filterkit.build.rust import plan_build

    monkeypatch.delenv("FILTERKIT_RUST_BUILD_STD", raising=False)
    for key, value in fake_toolchain(tmp_path / "a", std_for=("wasm32-unknown-unknown", "wasm32-wasip1")).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{tmp_path / 'a'}{os.pathsep}{os.environ['PATH']}")
    plan = plan_build(tmp_path, None)
    assert (plan.target, plan.build_std) == ("wasm32-wasip1", False)
    for key, value in fake_toolchain(tmp_path / "b", sources=True, targets=("wasm32-unknown-unknown",)).items():
        monkeypatch.setenv(key, value)
    plan = plan_build(tmp_path, None)
    assert (plan.target, plan.build_std) == ("wasm32-unknown-unknown", True)
    assert "no toolchain has a prebuilt wasm std" in plan.why

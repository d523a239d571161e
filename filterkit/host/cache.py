"""Compiled modules on disk: ``wasmtime.Module.serialize`` output keyed by the module's sha256, the
wasmtime version and the engine settings, so a second run (or a second process) skips compilation.

Location: ``$FILTERKIT_CACHE/modules/`` (default ``~/.cache/filterkit/modules/``). Each entry is
``<module sha256>-<settings key>.cwasm``: an 8-byte magic, the sha256 of the payload, then the payload.
Writes are atomic (temporary file + rename); an entry whose checksum does not match, or that
wasmtime refuses, is deleted and the module compiled again. ``FILTERKIT_MODULE_CACHE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import wasmtime

MAGIC = b"FKCWASM1"


def cache_dir() -> Path:
    base = os.environ.get("FILTERKIT_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "filterkit"
    return root / "modules"


def enabled() -> bool:
    return os.environ.get("FILTERKIT_MODULE_CACHE", "1").lower() not in ("0", "false", "no", "off")


def wasmtime_version() -> str:
    try:
        from importlib.metadata import version

        return version("wasmtime")
    except Exception:  # noqa: BLE001 - an unusual install: key on the module file instead
        return getattr(wasmtime, "__version__", "") or str(Path(wasmtime.__file__).stat().st_mtime_ns)


def entry_path(module_sha256: str, settings: str) -> Path:
    key = hashlib.sha256(f"{wasmtime_version()}|{settings}".encode()).hexdigest()[:16]
    return cache_dir() / f"{module_sha256}-{key}.cwasm"


def load(engine: wasmtime.Engine, module_sha256: str, settings: str) -> wasmtime.Module | None:
    """The cached compiled module, or None (absent, corrupt or from another wasmtime: then removed)."""
    if not enabled():
        return None
    path = entry_path(module_sha256, settings)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    payload = data[len(MAGIC) + 32:]
    if data[:len(MAGIC)] != MAGIC or hashlib.sha256(payload).digest() != data[len(MAGIC):len(MAGIC) + 32]:
        _remove(path)
        return None
    try:
        return wasmtime.Module.deserialize(engine, payload)
    except Exception:  # noqa: BLE001 - wasmtime refuses it: compile again
        _remove(path)
        return None


def store(module: wasmtime.Module, module_sha256: str, settings: str) -> Path | None:
    """Write ``module`` to the cache atomically; None when the cache is off or not writable."""
    if not enabled():
        return None
    path = entry_path(module_sha256, settings)
    try:
        payload = bytes(module.serialize())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".cwasm", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except BaseException:
            _remove(Path(tmp))
            raise
    except OSError:
        return None
    return path


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass

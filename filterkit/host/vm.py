"""Loading and running one proxy-wasm module on wasmtime: compile cache, instantiation, guest memory.

Nothing here knows the proxy-wasm ABI beyond "the guest exports ``memory`` and an allocator"; the
host functions come from :mod:`filterkit.host.abi` through ``imports``.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import wasmtime

# One callback may run this many wasm instructions (roughly) before it is stopped as a runaway loop.
FUEL_PER_CALL = 2_000_000_000

ABI_VERSIONS = ("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0", "proxy_abi_version_0_1_0")

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()
# (resolved path, sha256 hex) -> compiled module. A disk cache (Module.serialize / deserialize keyed
# by the same pair plus the wasmtime version) belongs in ``compiled_module`` when it is wanted.
_modules: dict[tuple[str, str], wasmtime.Module] = {}


def engine() -> wasmtime.Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.consume_fuel = True
            _engine = wasmtime.Engine(config)
        return _engine


@dataclass(frozen=True)
class CompiledModule:
    module: wasmtime.Module
    path: Path
    sha256: str

    @property
    def exports(self) -> set[str]:
        return {e.name for e in self.module.exports}

    @property
    def abi_version(self) -> str | None:
        names = self.exports
        for version in ABI_VERSIONS:
            if version in names:
                return version.removeprefix("proxy_abi_version_").replace("_", ".")
        return None


def compiled_module(path: Path | str, wasm: bytes | None = None) -> CompiledModule:
    """Compile ``path`` (or the given bytes, named ``path``) once per content; later calls reuse it."""
    path = Path(path)
    data = wasm if wasm is not None else path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    key = (str(path.resolve()) if wasm is None else str(path), digest)
    module = _modules.get(key)
    if module is None:
        module = wasmtime.Module(engine(), data)
        _modules[key] = module
    return CompiledModule(module, path, digest)


class MemoryAccessError(Exception):
    """The guest passed a pointer/size outside its memory; host functions answer InvalidMemoryAccess."""


class ProcExit(Exception):
    """The guest called WASI ``proc_exit``: execution stops (Envoy fails the VM)."""

    def __init__(self, code: int):
        super().__init__(f"proc_exit({code})")
        self.code = code


class GuestFailure(Exception):
    """A call into the guest did not return normally (trap, proc_exit, out of fuel, host error)."""

    def __init__(self, function: str, reason: str, backtrace: tuple[str, ...] = ()):
        self.function = function
        self.reason = reason
        self.backtrace = backtrace
        super().__init__(self.describe())

    def describe(self) -> str:
        text = f"{self.function}: {self.reason}"
        if self.backtrace:
            text += "\nwasm backtrace:\n" + "\n".join(f"  {line}" for line in self.backtrace)
        return text


class WasmVm:
    """One instance of the module in its own store, with memory helpers."""

    def __init__(self, compiled: CompiledModule, bind: Callable[["WasmVm", wasmtime.ImportType], Callable | None]):
        self.compiled = compiled
        self.store = wasmtime.Store(engine())
        linker = wasmtime.Linker(engine())
        linker.allow_shadowing = True
        for imp in compiled.module.imports:
            ty = imp.type
            if not isinstance(ty, wasmtime.FuncType):
                raise GuestFailure("instantiate", f"the module imports a {type(ty).__name__} "
                                   f"{imp.module}.{imp.name}; proxy-wasm hosts only provide functions")
            fn = bind(self, imp)
            linker.define_func(imp.module, imp.name, ty, fn)
        self.store.set_fuel(FUEL_PER_CALL)
        try:
            self.instance = linker.instantiate(self.store, compiled.module)
        except wasmtime.Trap as trap:
            raise _failure("instantiate", trap) from None
        exports = self.instance.exports(self.store)
        self._exports = {e.name: exports[e.name] for e in compiled.module.exports}
        memory = self._exports.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise GuestFailure("instantiate", "the module exports no memory named 'memory'")
        self.memory: wasmtime.Memory = memory
        self._alloc = self._exports.get("malloc") or self._exports.get("proxy_on_memory_allocate")
        self._param_counts = {name: len(f.type(self.store).params) for name, f in self._exports.items()
                              if isinstance(f, wasmtime.Func)}

    # -- calls ----------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self._param_counts

    def call(self, name: str, *args: int) -> int | None:
        """Call export ``name`` (missing: None) with as many of ``args`` as it takes.

        Older ABI versions take fewer arguments (0.1.0 has no end_of_stream), so extra ones are dropped.
        Raises ``GuestFailure`` when the call does not return normally.
        """
        count = self._param_counts.get(name)
        if count is None:
            return None
        func = self._exports[name]
        self.store.set_fuel(FUEL_PER_CALL)
        try:
            result = func(self.store, *args[:count])
        except wasmtime.Trap as trap:
            raise _failure(name, trap) from None
        except ProcExit as exc:
            raise GuestFailure(name, f"the module called WASI {exc}") from None
        except wasmtime.WasmtimeError as exc:
            raise GuestFailure(name, str(exc).strip()) from None
        except Exception as exc:  # a host function failed: report it as this callback's failure
            raise GuestFailure(name, f"host error: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, (list, tuple)):
            result = result[0] if result else None
        return int(result) if result is not None else None

    # -- memory ---------------------------------------------------------------------------------

    def read(self, ptr: int, size: int) -> bytes:
        if size == 0:
            return b""
        if ptr < 0 or size < 0 or ptr + size > self.memory.data_len(self.store):
            raise MemoryAccessError(f"{size} bytes at {ptr:#x}")
        return bytes(self.memory.read(self.store, ptr, ptr + size))

    def write(self, ptr: int, data: bytes) -> None:
        if ptr < 0 or ptr + len(data) > self.memory.data_len(self.store):
            raise MemoryAccessError(f"{len(data)} bytes at {ptr:#x}")
        if data:
            self.memory.write(self.store, data, ptr)

    def read_u32(self, ptr: int) -> int:
        return struct.unpack("<I", self.read(ptr, 4))[0]

    def write_u32(self, ptr: int, value: int) -> None:
        self.write(ptr, struct.pack("<I", value & 0xFFFFFFFF))

    def write_u64(self, ptr: int, value: int) -> None:
        self.write(ptr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def allocate(self, data: bytes) -> int:
        """Copy ``data`` into a buffer the guest allocates (and later frees) itself."""
        if self._alloc is None:
            raise MemoryAccessError("the module exports neither malloc nor proxy_on_memory_allocate")
        ptr = self._alloc(self.store, len(data))
        if not ptr:
            raise MemoryAccessError(f"the module's allocator returned NULL for {len(data)} bytes")
        self.write(ptr, data)
        return ptr

    def copy_out(self, data: bytes, ptr_ptr: int, size_ptr: int) -> None:
        """Hand ``data`` to the guest: allocate, copy, store pointer and size (like Envoy: 0/0 when empty)."""
        ptr = self.allocate(data) if data else 0
        self.write_u32(ptr_ptr, ptr)
        self.write_u32(size_ptr, len(data))


def _failure(function: str, trap: wasmtime.Trap) -> GuestFailure:
    message = trap.message
    # wasmtime's message is "error while executing at wasm backtrace: ... Caused by: <reason>".
    reason = message.split("Caused by:", 1)[-1].strip().splitlines()[0] if "Caused by:" in message else message.strip()
    if trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        reason = (f"stopped after about {FUEL_PER_CALL:,} wasm instructions in one callback "
                  "(an endless loop?)")
    frames = tuple(_frame(f) for f in trap.frames or ())
    return GuestFailure(function, reason, frames)


def _frame(frame: wasmtime.Frame) -> str:
    name = frame.func_name or f"<function {frame.func_index}>"
    return f"{name} (function {frame.func_index}, offset {frame.module_offset:#x})"


def frames_text(frames: Iterable[str]) -> str:
    return "\n".join(frames)

"""Loading and running one proxy-wasm module on wasmtime: compile cache, instantiation, guest memory,
guard rails (fuel per callback, a linear-memory limit).

Nothing here knows the proxy-wasm ABI beyond "the guest exports ``memory`` and an allocator"; the
host functions come from :mod:`filterkit.host.abi` through ``bind``.

Calls in both directions go through wasmtime's *unchecked* C API (raw value arrays) with ctypes
trampolines of our own: wasmtime-py's generic path converts every argument through ``Val`` objects
and costs several times more per call than the work the host function does.
"""

from __future__ import annotations

import ctypes
import hashlib
import struct
import threading
import time
from ctypes import CFUNCTYPE, c_int32, c_int64, c_size_t, c_void_p
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import wasmtime
from wasmtime import _ffi as ffi

from . import cache

# One callback may run this many wasm instructions (roughly) before it is stopped as a runaway loop.
FUEL_PER_CALL = 2_000_000_000
# Linear memory a VM may grow to (memory.grow beyond it fails, and the guest usually traps).
DEFAULT_MEMORY_LIMIT = 512 * 1024 * 1024
PAGE = 65536

ABI_VERSIONS = ("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0", "proxy_abi_version_0_1_0")
ENGINE_SETTINGS = "consume_fuel=1"  # part of the disk cache key: compiled code depends on it

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()
# (name, sha256 hex) -> compiled module, for this process.
_modules: dict[tuple[str, str], "CompiledModule"] = {}

# -- raw C API entry points (own function pointers, so our argtypes do not clash with wasmtime-py's) --
_dll = ffi.dll
_CALLBACK = CFUNCTYPE(c_size_t, c_void_p, c_void_p, c_void_p, c_size_t)
_define_unchecked = _dll["wasmtime_linker_define_func_unchecked"]
_define_unchecked.argtypes = [c_void_p, ctypes.c_char_p, c_size_t, ctypes.c_char_p, c_size_t, c_void_p, _CALLBACK,
                              c_void_p, c_void_p]
_define_unchecked.restype = c_void_p
_call_unchecked = _dll["wasmtime_func_call_unchecked"]
_call_unchecked.argtypes = [c_void_p, c_void_p, c_void_p, c_size_t, c_void_p]
_call_unchecked.restype = c_void_p
_memory_data = _dll["wasmtime_memory_data"]
_memory_data.argtypes = [c_void_p, c_void_p]
_memory_data.restype = c_void_p
_memory_size = _dll["wasmtime_memory_data_size"]
_memory_size.argtypes = [c_void_p, c_void_p]
_memory_size.restype = c_size_t
_set_fuel = _dll["wasmtime_context_set_fuel"]
_set_fuel.argtypes = [c_void_p, ctypes.c_uint64]
_set_fuel.restype = c_void_p
_trap_new = _dll["wasmtime_trap_new"]
_trap_new.argtypes = [ctypes.c_char_p, c_size_t]
_trap_new.restype = c_void_p
_string_at = ctypes.string_at
_memmove = ctypes.memmove


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
    load_seconds: float = 0.0  # compile or deserialize time of the first load in this process
    source: str = "compiled"  # "compiled" or "disk cache"

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


def compiled_module(path: Path | str, wasm: bytes | None = None, *, disk_cache: bool = True) -> CompiledModule:
    """Compile ``path`` (or the given bytes, named ``path``) once per content and process; the compiled
    code is also kept on disk (see :mod:`filterkit.host.cache`) so later processes skip compilation."""
    path = Path(path)
    data = wasm if wasm is not None else path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    key = (str(path.resolve()) if wasm is None else str(path), digest)
    found = _modules.get(key)
    if found is not None:
        return found
    started = time.perf_counter()
    module = cache.load(engine(), digest, ENGINE_SETTINGS) if disk_cache else None
    source = "disk cache"
    if module is None:
        try:
            module = wasmtime.Module(engine(), data)
        except wasmtime.WasmtimeError as err:
            raise GuestFailure("compile", f"{path.name} is not a valid wasm module: "
                               f"{str(err).strip().splitlines()[0]}") from None
        source = "compiled"
        if disk_cache:
            cache.store(module, digest, ENGINE_SETTINGS)
    found = CompiledModule(module, path, digest, time.perf_counter() - started, source)
    _modules[key] = found
    return found


def forget_compiled_modules() -> None:
    """Drop this process's compiled modules (benchmarks: measure a cold or disk-cached load)."""
    _modules.clear()


class MemoryAccessError(Exception):
    """The guest passed a pointer/size outside its memory; host functions answer InvalidMemoryAccess."""


class ProcExit(Exception):
    """The guest called WASI ``proc_exit``: execution stops (Envoy fails the VM)."""

    def __init__(self, code: int):
        super().__init__(f"proc_exit({code})")
        self.code = code


class GuestFailure(Exception):
    """A call into the guest did not return normally (trap, proc_exit, out of fuel, memory limit, host error).

    ``kind``: "trap", "fuel" (runaway loop), "memory" (linear memory limit), "exit" (proc_exit),
    "host" (a host function raised), "instantiate", "compile"."""

    def __init__(self, function: str, reason: str, backtrace: tuple[str, ...] = (), kind: str = "trap"):
        self.function = function
        self.reason = reason
        self.backtrace = backtrace
        self.kind = kind
        super().__init__(self.describe())

    def describe(self) -> str:
        text = f"{self.function}: {self.reason}"
        if self.backtrace:
            text += "\nwasm backtrace:\n" + "\n".join(f"  {line}" for line in self.backtrace)
        return text

    def __str__(self) -> str:
        return self.describe()


@dataclass
class HostFunction:
    """What ``bind`` gives for one import: the Python function and the result when it raises
    ``MemoryAccessError``."""

    fn: Callable[..., int | None]
    memory_error_result: int = 0
    unchecked: bool = True  # False: link through wasmtime-py's checked path (stubs of odd signatures)


@dataclass
class _Export:
    func: wasmtime.Func
    address: int
    nparams: int
    kinds: tuple[str, ...]
    result: str | None
    buf64: ctypes.Array = field(repr=False)
    buf32: ctypes.Array = field(repr=False)
    address_buf: int = 0
    slots: int = 1


def _kind(valtype: wasmtime.ValType) -> str:
    return str(valtype)


class WasmVm:
    """One instance of the module in its own store, with memory helpers."""

    def __init__(self, compiled: CompiledModule, bind: Callable[["WasmVm", wasmtime.ImportType], HostFunction],
                 *, memory_limit: int = DEFAULT_MEMORY_LIMIT, fuel: int = FUEL_PER_CALL):
        self.compiled = compiled
        self.memory_limit = memory_limit
        self.fuel = fuel
        self.store = wasmtime.Store(engine())
        self.store.set_limits(memory_size=memory_limit)
        self._ctx = ctypes.cast(self.store._context(), c_void_p).value
        self._pending: BaseException | None = None
        self._depth = 0
        self._callbacks: list = []  # keeps the ctypes trampolines alive as long as the store
        linker = wasmtime.Linker(engine())
        linker.allow_shadowing = True
        for imp in compiled.module.imports:
            ty = imp.type
            if not isinstance(ty, wasmtime.FuncType):
                raise GuestFailure("instantiate", f"the module imports a {type(ty).__name__} "
                                   f"{imp.module}.{imp.name}; proxy-wasm hosts only provide functions",
                                   kind="instantiate")
            self._link(linker, imp, ty, bind(self, imp))
        _set_fuel(self._ctx, fuel)
        try:
            self.instance = linker.instantiate(self.store, compiled.module)
        except wasmtime.Trap as trap:
            raise _failure("instantiate", trap, self) from None
        except wasmtime.WasmtimeError as err:
            raise GuestFailure("instantiate", str(err).strip().splitlines()[0], kind="instantiate") from None
        exports = self.instance.exports(self.store)
        self._exports = {e.name: exports[e.name] for e in compiled.module.exports}
        memory = self._exports.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise GuestFailure("instantiate", "the module exports no memory named 'memory'", kind="instantiate")
        self.memory: wasmtime.Memory = memory
        self._mem = ctypes.addressof(memory._memory)
        self._funcs: dict[str, _Export] = {}
        for name, func in self._exports.items():
            if isinstance(func, wasmtime.Func):
                ty = func.type(self.store)
                kinds = tuple(_kind(p) for p in ty.params)
                results = [_kind(r) for r in ty.results]
                slots = max(len(kinds), len(results), 1)
                buf64 = (c_int64 * (2 * slots))()
                buf32 = (c_int32 * (4 * slots)).from_buffer(buf64)
                self._funcs[name] = _Export(func, ctypes.addressof(func._func), len(kinds), kinds,
                                            results[0] if results else None, buf64, buf32,
                                            ctypes.addressof(buf64), slots)
        alloc = "malloc" if "malloc" in self._funcs else (
            "proxy_on_memory_allocate" if "proxy_on_memory_allocate" in self._funcs else None)
        self._alloc = alloc

    # -- linking --------------------------------------------------------------------------------

    def _link(self, linker: wasmtime.Linker, imp: wasmtime.ImportType, ty: wasmtime.FuncType,
              host: HostFunction) -> None:
        kinds = tuple(_kind(p) for p in ty.params)
        results = tuple(_kind(r) for r in ty.results)
        simple = all(k in ("i32", "i64") for k in kinds + results) and len(results) <= 1
        if not (host.unchecked and simple):
            linker.define_func(imp.module, imp.name, ty, self._checked(host))
            return
        callback = _CALLBACK(self._trampoline(host, kinds, results[0] if results else None))
        self._callbacks.append(callback)
        module, name = imp.module.encode(), imp.name.encode()
        err = _define_unchecked(ctypes.cast(linker.ptr(), c_void_p).value, module, len(module), name, len(name),
                                ctypes.cast(ty.ptr(), c_void_p).value, callback, None, None)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(ffi.wasmtime_error_t)))

    def _checked(self, host: HostFunction) -> Callable:
        def call(*args):
            try:
                return host.fn(*args)
            except MemoryAccessError:
                return host.memory_error_result
        return call

    def _trampoline(self, host: HostFunction, kinds: tuple[str, ...], result: str | None) -> Callable:
        fn, errno, n = host.fn, host.memory_error_result, len(kinds)
        slots = max(n, 1)
        arr32 = c_int32 * (4 * slots)
        arr64 = c_int64 * (2 * slots)
        fail = self._fail_in_guest

        if all(k == "i32" for k in kinds):
            stop = 4 * n
            if result == "i32":
                def cb(_env, _caller, addr, _count):
                    values = arr32.from_address(addr)
                    try:
                        r = fn(*values[0:stop:4])
                    except MemoryAccessError:
                        r = errno
                    except BaseException as exc:  # noqa: BLE001 - ends the guest call, re-raised by call()
                        return fail(exc)
                    values[0] = r or 0
                    values[1] = 0
                    return 0
                return cb

            def cb_void(_env, _caller, addr, _count):
                values = arr32.from_address(addr)
                try:
                    r = fn(*values[0:stop:4])
                except MemoryAccessError:
                    r = errno
                except BaseException as exc:  # noqa: BLE001
                    return fail(exc)
                if result is not None:
                    arr64.from_address(addr)[0] = r or 0
                return 0
            return cb_void

        def cb_mixed(_env, _caller, addr, _count):
            v32 = arr32.from_address(addr)
            v64 = arr64.from_address(addr)
            args = [v32[4 * i] if k == "i32" else v64[2 * i] for i, k in enumerate(kinds)]
            try:
                r = fn(*args)
            except MemoryAccessError:
                r = errno
            except BaseException as exc:  # noqa: BLE001
                return fail(exc)
            if result == "i32":
                v64[0] = (r or 0) & 0xFFFFFFFF
            elif result == "i64":
                v64[0] = r or 0
            return 0
        return cb_mixed

    def _fail_in_guest(self, exc: BaseException) -> int:
        """A host function raised: remember why and trap the guest (``call`` re-raises it)."""
        if self._pending is None:
            self._pending = exc
        message = b"host function failed"
        return _trap_new(message, len(message))

    # -- calls ----------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self._funcs

    def param_count(self, name: str) -> int | None:
        export = self._funcs.get(name)
        return None if export is None else export.nparams

    def call(self, name: str, *args: int) -> int | None:
        """Call export ``name`` (missing: None) with as many of ``args`` as it takes (missing ones: 0).

        Older ABI versions take fewer arguments (0.1.0 has no end_of_stream), so extra ones are dropped.
        Raises ``GuestFailure`` when the call does not return normally.
        """
        export = self._funcs.get(name)
        if export is None:
            return None
        buf64 = export.buf64
        n = export.nparams
        given = len(args)
        for i in range(n):
            value = args[i] if i < given else 0
            buf64[2 * i] = value & 0xFFFFFFFF if export.kinds[i] == "i32" else value
        if self._depth == 0:
            _set_fuel(self._ctx, self.fuel)
            self._pending = None
        trap = c_void_p()
        self._depth += 1
        try:
            err = _call_unchecked(self._ctx, export.address, export.address_buf, export.slots,
                                  ctypes.addressof(trap))
        finally:
            self._depth -= 1
        if trap.value or err:
            self._raise(name, trap.value, err)
        result = export.result
        if result is None:
            return None
        return export.buf32[0] if result == "i32" else buf64[0]

    def _raise(self, name: str, trap_ptr: int | None, err_ptr: int | None) -> None:
        pending, self._pending = self._pending, None
        if trap_ptr:
            trap = wasmtime.Trap._from_ptr(ctypes.cast(trap_ptr, ctypes.POINTER(ffi.wasm_trap_t)))
        else:
            error = wasmtime.WasmtimeError._from_ptr(ctypes.cast(err_ptr, ctypes.POINTER(ffi.wasmtime_error_t)))
            trap = error if isinstance(error, wasmtime.Trap) else None
            if trap is None and pending is None:
                raise GuestFailure(name, str(error).strip().splitlines()[0] if str(error).strip() else "error",
                                   kind="trap")
        frames = tuple(_frame(f) for f in (trap.frames or ())) if trap is not None else ()
        if isinstance(pending, ProcExit):
            raise GuestFailure(name, f"the module called WASI {pending}", frames, kind="exit") from None
        if isinstance(pending, GuestFailure):
            raise pending
        if pending is not None:
            raise GuestFailure(name, f"host error: {type(pending).__name__}: {pending}", frames,
                               kind="host") from pending
        raise _failure(name, trap, self) from None

    # -- memory ---------------------------------------------------------------------------------

    def memory_size(self) -> int:
        return _memory_size(self._ctx, self._mem)

    def read(self, ptr: int, size: int) -> bytes:
        if size == 0:
            return b""
        ptr &= 0xFFFFFFFF
        size &= 0xFFFFFFFF
        if ptr + size > _memory_size(self._ctx, self._mem):
            raise MemoryAccessError(f"{size} bytes at {ptr:#x}")
        return _string_at(_memory_data(self._ctx, self._mem) + ptr, size)

    def write(self, ptr: int, data: bytes) -> None:
        ptr &= 0xFFFFFFFF
        size = len(data)
        if ptr + size > _memory_size(self._ctx, self._mem):
            raise MemoryAccessError(f"{size} bytes at {ptr:#x}")
        if size:
            _memmove(_memory_data(self._ctx, self._mem) + ptr, data, size)

    def read_u32(self, ptr: int) -> int:
        return struct.unpack("<I", self.read(ptr, 4))[0]

    def write_u32(self, ptr: int, value: int) -> None:
        self.write(ptr, struct.pack("<I", value & 0xFFFFFFFF))

    def write_u32_pair(self, ptr_a: int, a: int, ptr_b: int, b: int) -> None:
        self.write(ptr_a, struct.pack("<I", a & 0xFFFFFFFF))
        self.write(ptr_b, struct.pack("<I", b & 0xFFFFFFFF))

    def write_u64(self, ptr: int, value: int) -> None:
        self.write(ptr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def allocate(self, data: bytes) -> int:
        """Copy ``data`` into a buffer the guest allocates (and later frees) itself."""
        if self._alloc is None:
            raise MemoryAccessError("the module exports neither malloc nor proxy_on_memory_allocate")
        ptr = self.call(self._alloc, len(data)) or 0
        if not ptr:
            raise MemoryAccessError(f"the module's allocator returned NULL for {len(data)} bytes")
        self.write(ptr, data)
        return ptr & 0xFFFFFFFF

    def copy_out(self, data: bytes, ptr_ptr: int, size_ptr: int) -> None:
        """Hand ``data`` to the guest: allocate, copy, store pointer and size (like Envoy: 0/0 when empty)."""
        ptr = self.allocate(data) if data else 0
        self.write_u32_pair(ptr_ptr, ptr, size_ptr, len(data))


def _failure(function: str, trap: wasmtime.Trap, vm: WasmVm | None = None) -> GuestFailure:
    message = trap.message
    # wasmtime's message is "error while executing at wasm backtrace: ... Caused by: <reason>".
    reason = message.split("Caused by:", 1)[-1].strip().splitlines()[0] if "Caused by:" in message else message.strip()
    kind = "trap"
    if trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        fuel = vm.fuel if vm is not None else FUEL_PER_CALL
        reason = f"stopped after about {fuel:,} wasm instructions in one callback (an endless loop?)"
        kind = "fuel"
    elif vm is not None and vm.memory_limit - vm.memory_size() < max(PAGE, vm.memory_limit // 4):
        # wasmtime does not say that a memory.grow was refused; a trap this close to the limit almost
        # always is the guest's allocator giving up after one
        reason += (f" — linear memory is near its limit ({vm.memory_size():,} of {vm.memory_limit:,} bytes): "
                   "a memory.grow was most likely refused, the filter ran out of memory (a leak?)")
        kind = "memory"
    frames = tuple(_frame(f) for f in trap.frames or ())
    return GuestFailure(function, reason, frames, kind=kind)


def _frame(frame: wasmtime.Frame) -> str:
    name = frame.func_name or f"<function {frame.func_index}>"
    return f"{name} (function {frame.func_index}, offset {frame.module_offset:#x})"


def frames_text(frames: Iterable[str]) -> str:
    return "\n".join(frames)

"""The host functions a proxy-wasm module imports: module ``env`` (ABI 0.2.1, plus the 0.1.0 names
that differ) and the WASI preview1 subset Envoy provides.

Each function mirrors Envoy's (proxy-wasm-cpp-host) behaviour: same result codes, same
serialisations, same corner cases. Unknown imports are linked to a stub that answers Unimplemented
(WASI: ENOSYS) and is reported once through ``host.note_unimplemented``.
"""

from __future__ import annotations

import os
import struct
import time
from typing import TYPE_CHECKING, Callable

import wasmtime

from .state import (
    LOG_LEVEL_NAMES, WASI_STDERR_LEVEL, WASI_STDOUT_LEVEL, MapType, Metric, StreamContext, WasmResult,
    parse_pairs, raw, serialize_pairs, text,
)
from .vm import MemoryAccessError, ProcExit, WasmVm

if TYPE_CHECKING:
    from .plugin import PluginHost

I, L = "i32", "i64"
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")

# name -> (params, results)
ENV_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "proxy_log": ((I, I, I), (I,)),
    "proxy_get_log_level": ((I,), (I,)),
    "proxy_get_current_time_nanoseconds": ((I,), (I,)),
    "proxy_set_tick_period_milliseconds": ((I,), (I,)),
    "proxy_get_property": ((I, I, I, I), (I,)),
    "proxy_set_property": ((I, I, I, I), (I,)),
    "proxy_get_configuration": ((I, I), (I,)),
    "proxy_get_status": ((I, I, I), (I,)),
    "proxy_get_header_map_value": ((I, I, I, I, I), (I,)),
    "proxy_get_header_map_pairs": ((I, I, I), (I,)),
    "proxy_set_header_map_pairs": ((I, I, I), (I,)),
    "proxy_add_header_map_value": ((I, I, I, I, I), (I,)),
    "proxy_replace_header_map_value": ((I, I, I, I, I), (I,)),
    "proxy_remove_header_map_value": ((I, I, I), (I,)),
    "proxy_get_header_map_size": ((I, I), (I,)),
    "proxy_get_buffer_bytes": ((I, I, I, I, I), (I,)),
    "proxy_get_buffer_status": ((I, I, I), (I,)),
    "proxy_set_buffer_bytes": ((I, I, I, I, I), (I,)),
    "proxy_send_local_response": ((I, I, I, I, I, I, I, I), (I,)),
    "proxy_continue_stream": ((I,), (I,)),
    "proxy_close_stream": ((I,), (I,)),
    "proxy_continue_request": ((), (I,)),
    "proxy_continue_response": ((), (I,)),
    "proxy_clear_route_cache": ((), (I,)),
    "proxy_done": ((), (I,)),
    "proxy_set_effective_context": ((I,), (I,)),
    "proxy_get_shared_data": ((I, I, I, I, I), (I,)),
    "proxy_set_shared_data": ((I, I, I, I, I), (I,)),
    "proxy_register_shared_queue": ((I, I, I), (I,)),
    "proxy_resolve_shared_queue": ((I, I, I, I, I), (I,)),
    "proxy_enqueue_shared_queue": ((I, I, I), (I,)),
    "proxy_dequeue_shared_queue": ((I, I, I), (I,)),
    "proxy_define_metric": ((I, I, I, I), (I,)),
    "proxy_increment_metric": ((I, L), (I,)),
    "proxy_record_metric": ((I, L), (I,)),
    "proxy_get_metric": ((I, I), (I,)),
    "proxy_http_call": ((I, I, I, I, I, I, I, I, I, I), (I,)),
    "proxy_call_foreign_function": ((I, I, I, I, I, I), (I,)),
}

WASI_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fd_write": ((I, I, I, I), (I,)),
    "fd_read": ((I, I, I, I), (I,)),
    "fd_close": ((I,), (I,)),
    "fd_seek": ((I, L, I, I), (I,)),
    "fd_fdstat_get": ((I, I), (I,)),
    "fd_prestat_get": ((I, I), (I,)),
    "fd_prestat_dir_name": ((I, I, I), (I,)),
    "path_open": ((I, I, I, I, I, L, L, I, I), (I,)),
    "environ_get": ((I, I), (I,)),
    "environ_sizes_get": ((I, I), (I,)),
    "args_get": ((I, I), (I,)),
    "args_sizes_get": ((I, I), (I,)),
    "clock_time_get": ((I, L, I), (I,)),
    "random_get": ((I, I), (I,)),
    "proc_exit": ((I,), ()),
    "sched_yield": ((), (I,)),
}

EFAULT, EBADF, EINVAL, ENOENT, ENOSYS, ENOTSUP = 21, 8, 28, 44, 52, 58


def _signature(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


class Abi:
    """The host functions of one VM; ``host`` holds the state they act on."""

    def __init__(self, host: "PluginHost", vm: WasmVm):
        self.host = host
        self.vm = vm

    # -- linking --------------------------------------------------------------------------------

    @staticmethod
    def binder(host: "PluginHost") -> Callable[[WasmVm, wasmtime.ImportType], Callable]:
        """What ``WasmVm`` calls for each import of the module."""
        abis: dict[int, Abi] = {}

        def bind(vm: WasmVm, imp: wasmtime.ImportType) -> Callable:
            abi = abis.get(id(vm))
            if abi is None:
                abi = abis[id(vm)] = Abi(host, vm)
            return abi.function(imp.module, imp.name, imp.type)

        return bind

    def function(self, module: str, name: str, ty: wasmtime.FuncType) -> Callable:
        wanted = None
        if module == "env":
            wanted = ENV_SIGNATURES.get(name)
            errno = WasmResult.INVALID_MEMORY_ACCESS
        elif module in WASI_MODULES:
            wanted = WASI_SIGNATURES.get(name)
            errno = EFAULT
        impl = getattr(self, ("wasi_" if module in WASI_MODULES else "") + name, None) if wanted else None
        if impl is not None and _signature(ty) == wanted:
            def call(*args, _impl=impl, _errno=int(errno)):
                try:
                    result = _impl(*args)
                except MemoryAccessError:
                    return _errno
                return None if result is None else int(result)
            return call
        why = "not provided by this host" if impl is None else (
            f"signature {_signature(ty)} differs from the expected {wanted}")
        self.host.note_unimplemented(f"{module}.{name}", why)
        results = [str(r) for r in ty.results]
        answer = ENOSYS if module in WASI_MODULES else int(WasmResult.UNIMPLEMENTED)

        def stub(*_args):
            self.host.note_unimplemented_call(f"{module}.{name}")
            if not results:
                return None
            values = [answer if r in ("i32", "i64") else 0 for r in results]
            return values[0] if len(values) == 1 else values
        return stub

    # -- helpers --------------------------------------------------------------------------------

    @property
    def ctx(self):
        return self.host.context()

    def _key(self, ptr: int, size: int) -> str:
        return text(self.vm.read(ptr, size))

    # -- logging, time, properties --------------------------------------------------------------

    def proxy_log(self, level: int, ptr: int, size: int) -> int:
        message = text(self.vm.read(ptr, size))
        if not 0 <= level < len(LOG_LEVEL_NAMES):
            return WasmResult.BAD_ARGUMENT
        self.host.log(level, message)
        return WasmResult.OK

    def proxy_get_log_level(self, ptr: int) -> int:
        self.vm.write_u32(ptr, self.host.log_level)
        return WasmResult.OK

    def proxy_get_current_time_nanoseconds(self, ptr: int) -> int:
        self.vm.write_u64(ptr, self.host.now_ns())
        return WasmResult.OK

    def proxy_set_tick_period_milliseconds(self, period: int) -> int:
        root = self.ctx.root or self.ctx
        root.tick_period_ms = period
        return WasmResult.OK

    def proxy_get_property(self, path_ptr: int, path_size: int, value_ptr_ptr: int, value_size_ptr: int) -> int:
        path = tuple(text(part) for part in self.vm.read(path_ptr, path_size).split(b"\0"))
        if path and path[-1] == "":
            path = path[:-1]
        value = self.host.get_property(self.ctx, path)
        if value is None:
            return WasmResult.NOT_FOUND
        self.vm.copy_out(value, value_ptr_ptr, value_size_ptr)
        return WasmResult.OK

    def proxy_set_property(self, path_ptr: int, path_size: int, value_ptr: int, value_size: int) -> int:
        path = tuple(text(part) for part in self.vm.read(path_ptr, path_size).split(b"\0") if part)
        self.ctx.properties[path] = self.vm.read(value_ptr, value_size)
        return WasmResult.OK

    def proxy_get_configuration(self, value_ptr_ptr: int, value_size_ptr: int) -> int:  # ABI 0.1.0
        root = self.ctx.root or self.ctx
        self.vm.copy_out(root.plugin_config, value_ptr_ptr, value_size_ptr)
        return WasmResult.OK

    def proxy_get_status(self, code_ptr: int, value_ptr_ptr: int, value_size_ptr: int) -> int:
        code, message = self.host.status
        self.vm.write_u32(code_ptr, code)
        self.vm.copy_out(raw(message), value_ptr_ptr, value_size_ptr)
        return WasmResult.OK

    # -- header maps ----------------------------------------------------------------------------

    def _map(self, kind: int, write: bool = False):
        if kind > MapType.HTTP_CALL_RESPONSE_TRAILERS:
            return None, WasmResult.BAD_ARGUMENT
        hmap = self.ctx.header_map(kind)
        if hmap is None or (write and not hmap.writable):
            return None, WasmResult.BAD_ARGUMENT
        return hmap, WasmResult.OK

    def proxy_get_header_map_value(self, kind: int, key_ptr: int, key_size: int, value_ptr_ptr: int,
                                   value_size_ptr: int) -> int:
        key = self._key(key_ptr, key_size)
        hmap, result = self._map(kind)
        if hmap is None:
            return result
        value = hmap.get(key)
        if value is None:
            return WasmResult.NOT_FOUND
        self.vm.copy_out(raw(value), value_ptr_ptr, value_size_ptr)
        return WasmResult.OK

    def proxy_get_header_map_pairs(self, kind: int, ptr_ptr: int, size_ptr: int) -> int:
        hmap, result = self._map(kind)
        if hmap is None:
            return result
        self.vm.copy_out(serialize_pairs(hmap.pairs) if hmap.pairs else b"", ptr_ptr, size_ptr)
        return WasmResult.OK

    def proxy_set_header_map_pairs(self, kind: int, ptr: int, size: int) -> int:
        pairs = parse_pairs(self.vm.read(ptr, size))
        hmap, result = self._map(kind, write=True)
        if hmap is None:
            return result
        hmap.set_all(pairs)
        return WasmResult.OK

    def proxy_add_header_map_value(self, kind: int, key_ptr: int, key_size: int, value_ptr: int,
                                   value_size: int) -> int:
        key, value = self._key(key_ptr, key_size), self._key(value_ptr, value_size)
        hmap, result = self._map(kind, write=True)
        if hmap is None:
            return result
        hmap.add(key, value)
        return WasmResult.OK

    def proxy_replace_header_map_value(self, kind: int, key_ptr: int, key_size: int, value_ptr: int,
                                       value_size: int) -> int:
        key, value = self._key(key_ptr, key_size), self._key(value_ptr, value_size)
        hmap, result = self._map(kind, write=True)
        if hmap is None:
            return result
        hmap.replace(key, value)
        return WasmResult.OK

    def proxy_remove_header_map_value(self, kind: int, key_ptr: int, key_size: int) -> int:
        key = self._key(key_ptr, key_size)
        hmap, result = self._map(kind, write=True)
        if hmap is None:
            return result
        hmap.remove(key)
        return WasmResult.OK

    def proxy_get_header_map_size(self, kind: int, size_ptr: int) -> int:
        hmap, result = self._map(kind)
        if hmap is None:
            return result
        self.vm.write_u32(size_ptr, hmap.byte_size())
        return WasmResult.OK

    # -- buffers --------------------------------------------------------------------------------

    def proxy_get_buffer_bytes(self, kind: int, start: int, length: int, ptr_ptr: int, size_ptr: int) -> int:
        if kind > 7:
            return WasmResult.BAD_ARGUMENT
        buf = self.ctx.buffer(kind)
        if buf is None:
            return WasmResult.NOT_FOUND
        # The ABI's sizes are u32 (Envoy's Word); wasmtime hands i32 over signed. The Rust SDK asks
        # for the whole buffer with length u32::MAX, which arrives here as -1.
        start, length = start & 0xFFFFFFFF, length & 0xFFFFFFFF
        size = len(buf.data)
        if start > size:
            length = 0
        elif start + length > size:
            length = size - start
        if length == 0:
            self.vm.write_u32(ptr_ptr, 0)
            self.vm.write_u32(size_ptr, 0)
            return WasmResult.OK
        self.vm.copy_out(bytes(buf.data[start:start + length]), ptr_ptr, size_ptr)
        return WasmResult.OK

    def proxy_get_buffer_status(self, kind: int, length_ptr: int, flags_ptr: int) -> int:
        if kind > 7:
            return WasmResult.BAD_ARGUMENT
        buf = self.ctx.buffer(kind)
        if buf is None:
            return WasmResult.NOT_FOUND
        self.vm.write_u32(length_ptr, len(buf.data))
        self.vm.write_u32(flags_ptr, 0)
        return WasmResult.OK

    def proxy_set_buffer_bytes(self, kind: int, start: int, length: int, data_ptr: int, data_size: int) -> int:
        if kind > 7:
            return WasmResult.BAD_ARGUMENT
        buf = self.ctx.buffer(kind)
        if buf is None:
            return WasmResult.NOT_FOUND
        start, length = start & 0xFFFFFFFF, length & 0xFFFFFFFF  # u32 in the ABI (see above)
        return buf.set_bytes(start, length, self.vm.read(data_ptr, data_size))

    # -- stream control -------------------------------------------------------------------------

    def proxy_send_local_response(self, status: int, details_ptr: int, details_size: int, body_ptr: int,
                                  body_size: int, headers_ptr: int, headers_size: int, grpc_status: int) -> int:
        details = text(self.vm.read(details_ptr, details_size))
        body = self.vm.read(body_ptr, body_size)
        headers = parse_pairs(self.vm.read(headers_ptr, headers_size))
        self.host.send_local_response(self.ctx, status, details, body, headers, grpc_status)
        return WasmResult.OK

    def proxy_continue_stream(self, stream_type: int) -> int:
        if stream_type > 3:
            return WasmResult.BAD_ARGUMENT
        if stream_type == 3:
            return WasmResult.UNIMPLEMENTED
        ctx = self.ctx
        if isinstance(ctx, StreamContext) and stream_type in (0, 1):
            ctx.continue_requested[stream_type] = True
        return WasmResult.OK

    def proxy_continue_request(self) -> int:
        return self.proxy_continue_stream(0)

    def proxy_continue_response(self) -> int:
        return self.proxy_continue_stream(1)

    def proxy_close_stream(self, stream_type: int) -> int:
        if stream_type > 3:
            return WasmResult.BAD_ARGUMENT
        ctx = self.ctx
        if isinstance(ctx, StreamContext) and stream_type in (0, 1):
            ctx.closed = True
        return WasmResult.OK

    def proxy_clear_route_cache(self) -> int:
        ctx = self.ctx
        if isinstance(ctx, StreamContext):
            ctx.route_cache_cleared += 1
        return WasmResult.OK

    def proxy_done(self) -> int:
        return self.host.done(self.ctx)

    def proxy_set_effective_context(self, context_id: int) -> int:
        return WasmResult.OK if self.host.set_effective_context(context_id) else WasmResult.BAD_ARGUMENT

    # -- shared data and queues -----------------------------------------------------------------

    def proxy_get_shared_data(self, key_ptr: int, key_size: int, value_ptr_ptr: int, value_size_ptr: int,
                              cas_ptr: int) -> int:
        key = self._key(key_ptr, key_size)
        entry = self.host.shared.data.get((self.host.vm_id, key))
        if entry is None:
            return WasmResult.NOT_FOUND
        self.vm.copy_out(entry[0], value_ptr_ptr, value_size_ptr)
        self.vm.write_u32(cas_ptr, entry[1])
        return WasmResult.OK

    def proxy_set_shared_data(self, key_ptr: int, key_size: int, value_ptr: int, value_size: int, cas: int) -> int:
        key = self._key(key_ptr, key_size)
        value = self.vm.read(value_ptr, value_size)
        shared = self.host.shared
        entry = shared.data.get((self.host.vm_id, key))
        if cas and entry is not None and entry[1] != cas:
            return WasmResult.CAS_MISMATCH
        shared.data[(self.host.vm_id, key)] = (value, shared.next_cas)
        shared.next_cas = shared.next_cas + 1 if shared.next_cas < 0xFFFFFFFF else 1
        return WasmResult.OK

    def proxy_register_shared_queue(self, name_ptr: int, name_size: int, token_ptr: int) -> int:
        name = self._key(name_ptr, name_size)
        shared = self.host.shared
        key = (self.host.vm_id, name)
        token = shared.queue_tokens.get(key)
        if token is None:
            token = len(shared.queues) + 1
            shared.queue_tokens[key] = token
            shared.queues[token] = (key[0], name, [])
        ctx = self.ctx
        shared.queue_owner[token] = (ctx.root or ctx).id
        self.vm.write_u32(token_ptr, token)
        return WasmResult.OK

    def proxy_resolve_shared_queue(self, vm_ptr: int, vm_size: int, name_ptr: int, name_size: int,
                                   token_ptr: int) -> int:
        vm_id = self._key(vm_ptr, vm_size)
        name = self._key(name_ptr, name_size)
        token = self.host.shared.queue_tokens.get((vm_id, name))
        if token is None:
            return WasmResult.NOT_FOUND
        self.vm.write_u32(token_ptr, token)
        return WasmResult.OK

    def proxy_enqueue_shared_queue(self, token: int, data_ptr: int, data_size: int) -> int:
        data = self.vm.read(data_ptr, data_size)
        queue = self.host.shared.queues.get(token)
        if queue is None:
            return WasmResult.NOT_FOUND
        queue[2].append(data)
        self.host.queue_ready(token)
        return WasmResult.OK

    def proxy_dequeue_shared_queue(self, token: int, ptr_ptr: int, size_ptr: int) -> int:
        queue = self.host.shared.queues.get(token)
        if queue is None:
            return WasmResult.NOT_FOUND
        if not queue[2]:
            return WasmResult.EMPTY
        self.vm.copy_out(queue[2][0], ptr_ptr, size_ptr)
        queue[2].pop(0)
        return WasmResult.OK

    # -- metrics --------------------------------------------------------------------------------

    def proxy_define_metric(self, kind: int, name_ptr: int, name_size: int, id_ptr: int) -> int:
        name = self._key(name_ptr, name_size)
        if kind > 2:
            return WasmResult.BAD_ARGUMENT
        shared = self.host.shared
        metric_id = shared.metric_ids.get((kind, name))
        if metric_id is None:
            metric_id = (len(shared.metrics) + 1) << 2 | kind
            shared.metric_ids[(kind, name)] = metric_id
            shared.metrics[metric_id] = Metric(kind, name)
        self.vm.write_u32(id_ptr, metric_id)
        return WasmResult.OK

    def proxy_increment_metric(self, metric_id: int, offset: int) -> int:
        metric = self.host.shared.metrics.get(metric_id)
        if metric is None:
            return WasmResult.NOT_FOUND
        if metric.kind == 0:
            if offset < 0:
                return WasmResult.BAD_ARGUMENT
            metric.value += offset
        elif metric.kind == 1:
            metric.value = max(0, metric.value + offset)
        else:
            return WasmResult.BAD_ARGUMENT
        return WasmResult.OK

    def proxy_record_metric(self, metric_id: int, value: int) -> int:
        metric = self.host.shared.metrics.get(metric_id)
        if metric is None:
            return WasmResult.NOT_FOUND
        value &= 0xFFFFFFFFFFFFFFFF
        if metric.kind == 0:
            metric.value += value
        elif metric.kind == 1:
            metric.value = value
        else:
            metric.samples.append(value)
        return WasmResult.OK

    def proxy_get_metric(self, metric_id: int, result_ptr: int) -> int:
        metric = self.host.shared.metrics.get(metric_id)
        if metric is None:
            return WasmResult.NOT_FOUND
        if metric.kind == 2:
            return WasmResult.BAD_ARGUMENT
        self.vm.write_u64(result_ptr, metric.value)
        return WasmResult.OK

    # -- outbound calls -------------------------------------------------------------------------

    def proxy_http_call(self, uri_ptr: int, uri_size: int, headers_ptr: int, headers_size: int, body_ptr: int,
                        body_size: int, trailers_ptr: int, trailers_size: int, timeout_ms: int,
                        token_ptr: int) -> int:
        upstream = self._key(uri_ptr, uri_size)
        headers = parse_pairs(self.vm.read(headers_ptr, headers_size))
        body = self.vm.read(body_ptr, body_size)
        trailers = parse_pairs(self.vm.read(trailers_ptr, trailers_size))
        self.vm.write_u32(token_ptr, 0)
        result, token = self.host.http_call(self.ctx, upstream, headers, body, trailers, timeout_ms)
        self.vm.write_u32(token_ptr, token)
        return result

    def proxy_call_foreign_function(self, name_ptr: int, name_size: int, args_ptr: int, args_size: int,
                                    results_ptr: int, results_size_ptr: int) -> int:
        self.vm.read(name_ptr, name_size)
        self.vm.read(args_ptr, args_size)
        return WasmResult.NOT_FOUND

    # -- WASI (what Envoy provides) -------------------------------------------------------------

    def wasi_fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        if fd == 1:
            level = WASI_STDOUT_LEVEL
        elif fd == 2:
            level = WASI_STDERR_LEVEL
        else:
            return EBADF
        chunks = []
        for i in range(iovs_len):
            buf, buf_len = struct.unpack("<II", self.vm.read(iovs + 8 * i, 8))
            if buf_len:
                chunks.append(self.vm.read(buf, buf_len))
        data = b"".join(chunks)
        if data:
            message = data[:-1] if data.endswith(b"\n") else data
            self.host.log(level, text(message))
        self.vm.write_u32(nwritten_ptr, len(data))
        return 0

    def wasi_fd_read(self, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
        return ENOSYS

    def wasi_fd_close(self, fd: int) -> int:
        return 0

    def wasi_fd_seek(self, fd: int, offset: int, whence: int, newoffset_ptr: int) -> int:
        return 0

    def wasi_fd_fdstat_get(self, fd: int, stat_ptr: int) -> int:
        if fd not in (1, 2):
            return EBADF
        self.vm.write(stat_ptr, struct.pack("<QQQ", 0, 64, 0))
        return 0

    def wasi_fd_prestat_get(self, fd: int, buf_ptr: int) -> int:
        return EBADF

    def wasi_fd_prestat_dir_name(self, fd: int, path_ptr: int, path_len: int) -> int:
        return ENOSYS

    def wasi_path_open(self, *_args: int) -> int:
        return ENOENT

    def wasi_environ_get(self, environ_ptr: int, buf_ptr: int) -> int:
        return 0

    def wasi_environ_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        self.vm.write_u32(count_ptr, 0)
        self.vm.write_u32(size_ptr, 0)
        return 0

    def wasi_args_get(self, argv_ptr: int, buf_ptr: int) -> int:
        return 0

    def wasi_args_sizes_get(self, argc_ptr: int, size_ptr: int) -> int:
        self.vm.write_u32(argc_ptr, 0)
        self.vm.write_u32(size_ptr, 0)
        return 0

    def wasi_clock_time_get(self, clock_id: int, precision: int, time_ptr: int) -> int:
        if clock_id == 0:
            value = self.host.now_ns()
        elif clock_id == 1:
            value = time.monotonic_ns()
        else:
            return ENOTSUP
        self.vm.write_u64(time_ptr, value)
        return 0

    def wasi_random_get(self, buf_ptr: int, buf_len: int) -> int:
        if buf_len > 64 * 1024:
            return EINVAL
        if buf_len:
            self.vm.write(buf_ptr, os.urandom(buf_len))
        return 0

    def wasi_proc_exit(self, code: int) -> None:
        raise ProcExit(code)

    def wasi_sched_yield(self) -> int:
        return 0

"""The host functions a proxy-wasm module imports: module ``env`` (ABI 0.2.1 and 0.2.0, plus the
0.1.0 names that differ) and the WASI preview1 subset Envoy provides.

Each function mirrors Envoy's (``source/extensions/common/wasm/context.cc`` on top of proxy-wasm-cpp-host's
``exports.cc``): same result codes, same serialisations, same corner cases — e.g. a header map is
only there while its callback runs (BadArgument afterwards), counters refuse increments <= 0,
metric ids count up per type in steps of 4, http/gRPC calls belong to the root context.
Unknown imports are linked to a stub that answers Unimplemented (WASI: ENOSYS) and is reported once
through ``host.note_unimplemented``.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import TYPE_CHECKING, Callable

import wasmtime

from .state import (
    LOG_LEVEL_NAMES, WASI_STDERR_LEVEL, WASI_STDOUT_LEVEL, Buffer, BufferType, MapType, Metric, MetricType,
    StreamContext, StreamType, TcpContext, WasmResult, parse_pairs, raw, serialize_pairs, text,
)
from .vm import HostFunction, ProcExit, WasmVm

if TYPE_CHECKING:
    from .plugin import PluginHost

I, L = "i32", "i64"
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
U32 = 0xFFFFFFFF
MAX_MAP_TYPE = MapType.HTTP_CALL_RESPONSE_TRAILERS
MAX_BUFFER_TYPE = BufferType.CALL_DATA
METRIC_ID_STEP = 4

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
    "proxy_grpc_call": ((I, I, I, I, I, I, I, I, I, I, I, I), (I,)),
    "proxy_grpc_stream": ((I, I, I, I, I, I, I, I, I), (I,)),
    "proxy_grpc_send": ((I, I, I, I), (I,)),
    "proxy_grpc_cancel": ((I,), (I,)),
    "proxy_grpc_close": ((I,), (I,)),
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


def _details(text_: str) -> str:
    """Envoy's StringUtil::replaceAllEmptySpace on local-reply details."""
    return "".join("_" if c in " \t\f\v\n\r" else c for c in text_)


class Abi:
    """The host functions of one VM; ``host`` holds the state they act on."""

    def __init__(self, host: "PluginHost", vm: WasmVm):
        self.host = host
        self.vm = vm
        self.context = host.context  # bound: the current (or effective) context

    # -- linking --------------------------------------------------------------------------------

    @staticmethod
    def binder(host: "PluginHost") -> Callable[[WasmVm, wasmtime.ImportType], HostFunction]:
        """What ``WasmVm`` calls for each import of the module."""
        abis: dict[int, Abi] = {}

        def bind(vm: WasmVm, imp: wasmtime.ImportType) -> HostFunction:
            abi = abis.get(id(vm))
            if abi is None:
                abi = abis[id(vm)] = Abi(host, vm)
            return abi.function(imp.module, imp.name, imp.type)

        return bind

    def function(self, module: str, name: str, ty: wasmtime.FuncType) -> HostFunction:
        wanted = None
        errno = 0
        if module == "env":
            wanted = ENV_SIGNATURES.get(name)
            errno = WasmResult.INVALID_MEMORY_ACCESS
        elif module in WASI_MODULES:
            wanted = WASI_SIGNATURES.get(name)
            errno = EFAULT
        impl = getattr(self, ("wasi_" if module in WASI_MODULES else "") + name, None) if wanted else None
        if impl is not None and _signature(ty) == wanted:
            return HostFunction(impl, int(errno))
        why = "not provided by this host" if impl is None else (
            f"signature {_signature(ty)} differs from the expected {wanted}")
        self.host.note_unimplemented(f"{module}.{name}", why)
        results = [str(r) for r in ty.results]
        answer = ENOSYS if module in WASI_MODULES else int(WasmResult.UNIMPLEMENTED)
        qualified = f"{module}.{name}"

        def stub(*_args):
            self.host.note_unimplemented_call(qualified)
            if not results:
                return None
            values = [answer if r in ("i32", "i64") else 0 for r in results]
            return values[0] if len(values) == 1 else values
        return HostFunction(stub, 0, unchecked=len(results) <= 1)

    # -- helpers --------------------------------------------------------------------------------

    @property
    def ctx(self):
        return self.context()

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
        self.vm.write_u64(ptr, self.host.clock.now_ns())
        return WasmResult.OK

    def proxy_set_tick_period_milliseconds(self, period: int) -> int:
        ctx = self.ctx
        root = ctx.root_context
        if root is None:
            return WasmResult.BAD_ARGUMENT
        self.host.set_tick_period(root, period & U32)
        return WasmResult.OK

    def proxy_get_property(self, path_ptr: int, path_size: int, value_ptr_ptr: int, value_size_ptr: int) -> int:
        data = self.vm.read(path_ptr, path_size)
        path = tuple(text(part) for part in data.split(b"\0"))
        if path and path[-1] == "":
            path = path[:-1]
        value = self.host.get_property(self.ctx, path)
        if value is None:
            return WasmResult.NOT_FOUND
        self.vm.copy_out(value, value_ptr_ptr, value_size_ptr)
        return WasmResult.OK

    def proxy_set_property(self, path_ptr: int, path_size: int, value_ptr: int, value_size: int) -> int:
        path = self.vm.read(path_ptr, path_size)
        value = self.vm.read(value_ptr, value_size)
        ctx = self.ctx
        if not isinstance(ctx, (StreamContext, TcpContext)):
            return WasmResult.NOT_FOUND  # Envoy: no stream info outside a stream
        ctx.filter_state[text(path)] = value
        return WasmResult.OK

    def proxy_get_configuration(self, value_ptr_ptr: int, value_size_ptr: int) -> int:  # ABI 0.1.0
        root = self.ctx.root_context
        if root is None:
            return WasmResult.NOT_FOUND
        self.vm.copy_out(root.plugin_config if root.configuring else root.vm_config, value_ptr_ptr, value_size_ptr)
        return WasmResult.OK

    def proxy_get_status(self, code_ptr: int, value_ptr_ptr: int, value_size_ptr: int) -> int:
        code, message = self.host.status
        self.vm.write_u32(code_ptr, code)
        self.vm.copy_out(raw(message), value_ptr_ptr, value_size_ptr)
        return WasmResult.OK

    # -- header maps ----------------------------------------------------------------------------

    def proxy_get_header_map_value(self, kind: int, key_ptr: int, key_size: int, value_ptr_ptr: int,
                                   value_size_ptr: int) -> int:
        kind &= U32
        if kind > MAX_MAP_TYPE:
            return WasmResult.BAD_ARGUMENT
        key = self._key(key_ptr, key_size)
        ctx = self.ctx
        hmap = ctx.header_map(kind)
        if hmap is None:
            if getattr(ctx, "log_maps", None) is not None:  # access-log phase: maps may be absent
                if self.host.abi_version == "0.1.0":
                    self.vm.copy_out(b"", value_ptr_ptr, value_size_ptr)
                    return WasmResult.OK
                return WasmResult.NOT_FOUND
            return WasmResult.BAD_ARGUMENT
        value = hmap.get(key)
        if value is None:
            if self.host.abi_version == "0.1.0":
                self.vm.copy_out(b"", value_ptr_ptr, value_size_ptr)
                return WasmResult.OK
            return WasmResult.NOT_FOUND
        self.vm.copy_out(raw(value), value_ptr_ptr, value_size_ptr)
        return WasmResult.OK

    def proxy_get_header_map_pairs(self, kind: int, ptr_ptr: int, size_ptr: int) -> int:
        kind &= U32
        if kind > MAX_MAP_TYPE:
            return WasmResult.BAD_ARGUMENT
        hmap = self.ctx.header_map(kind)
        self.vm.copy_out(serialize_pairs(hmap.pairs) if hmap is not None and hmap.pairs else b"", ptr_ptr, size_ptr)
        return WasmResult.OK

    def _writable(self, kind: int):
        kind &= U32
        if kind > MAX_MAP_TYPE:
            return None
        hmap = self.ctx.header_map(kind, write=True)
        if hmap is None or not hmap.writable:
            return None
        return hmap

    def _modified(self, kind: int) -> None:
        if kind & U32 == MapType.REQUEST_HEADERS:  # Envoy clears the route cache on request header changes
            ctx = self.ctx
            if isinstance(ctx, StreamContext):
                ctx.route_cache_cleared += 1

    def proxy_set_header_map_pairs(self, kind: int, ptr: int, size: int) -> int:
        pairs = parse_pairs(self.vm.read(ptr, size))
        return self._edit_map(kind, lambda hmap: hmap.set_all(pairs))

    def proxy_add_header_map_value(self, kind: int, key_ptr: int, key_size: int, value_ptr: int,
                                   value_size: int) -> int:
        key, value = self._key(key_ptr, key_size), self._key(value_ptr, value_size)
        return self._edit_map(kind, lambda hmap: hmap.add(key, value))

    def proxy_replace_header_map_value(self, kind: int, key_ptr: int, key_size: int, value_ptr: int,
                                       value_size: int) -> int:
        key, value = self._key(key_ptr, key_size), self._key(value_ptr, value_size)
        return self._edit_map(kind, lambda hmap: hmap.replace(key, value))

    def proxy_remove_header_map_value(self, kind: int, key_ptr: int, key_size: int) -> int:
        key = self._key(key_ptr, key_size)
        return self._edit_map(kind, lambda hmap: hmap.remove(key))

    def _edit_map(self, kind: int, edit) -> int:
        """A change to a writable header map (BadArgument when the map cannot be changed now)."""
        hmap = self._writable(kind)
        if hmap is None:
            return WasmResult.BAD_ARGUMENT
        edit(hmap)
        self._modified(kind)
        return WasmResult.OK

    def proxy_get_header_map_size(self, kind: int, size_ptr: int) -> int:
        hmap = self._writable(kind)  # Envoy uses the mutable map here: absent in proxy_on_log
        if hmap is None:
            return WasmResult.BAD_ARGUMENT
        self.vm.write_u32(size_ptr, hmap.byte_size())
        return WasmResult.OK

    # -- buffers --------------------------------------------------------------------------------

    def _buffer(self, kind: int) -> tuple[Buffer | None, int]:
        """The buffer ``kind`` names in the current context, or None and the result to return."""
        kind &= U32
        if kind > MAX_BUFFER_TYPE:
            return None, WasmResult.BAD_ARGUMENT
        buf = self.ctx.buffer(kind)
        return (buf, WasmResult.OK) if buf is not None else (None, WasmResult.NOT_FOUND)

    def proxy_get_buffer_bytes(self, kind: int, start: int, length: int, ptr_ptr: int, size_ptr: int) -> int:
        buf, problem = self._buffer(kind)
        if buf is None:
            return problem
        # The ABI's sizes are u32 (Envoy's Word); wasmtime hands i32 over signed. The Rust SDK asks
        # for the whole buffer with length u32::MAX, which arrives here as -1.
        start, length = start & U32, length & U32
        size = len(buf.data)
        if start > size:
            length = 0
        elif start + length > size:
            length = size - start
        if length == 0:
            self.vm.write_u32_pair(ptr_ptr, 0, size_ptr, 0)
            return WasmResult.OK
        self.vm.copy_out(bytes(buf.data[start:start + length]), ptr_ptr, size_ptr)
        return WasmResult.OK

    def proxy_get_buffer_status(self, kind: int, length_ptr: int, flags_ptr: int) -> int:
        buf, problem = self._buffer(kind)
        if buf is None:
            return problem
        self.vm.write_u32_pair(length_ptr, len(buf.data), flags_ptr, 0)
        return WasmResult.OK

    def proxy_set_buffer_bytes(self, kind: int, start: int, length: int, data_ptr: int, data_size: int) -> int:
        buf, problem = self._buffer(kind)
        if buf is None:
            return problem
        start, length = start & U32, length & U32  # u32 in the ABI (see above)
        return buf.set_bytes(start, length, self.vm.read(data_ptr, data_size))

    # -- stream control -------------------------------------------------------------------------

    def proxy_send_local_response(self, status: int, details_ptr: int, details_size: int, body_ptr: int,
                                  body_size: int, headers_ptr: int, headers_size: int, grpc_status: int) -> int:
        details = _details(text(self.vm.read(details_ptr, details_size)))
        body = self.vm.read(body_ptr, body_size)
        headers = [(k.lower(), v) for k, v in parse_pairs(self.vm.read(headers_ptr, headers_size))]
        self.host.send_local_response(self.ctx, status & U32, details, body, headers, grpc_status)
        return WasmResult.OK

    def proxy_continue_stream(self, stream_type: int) -> int:
        stream_type &= U32
        if stream_type > StreamType.UPSTREAM:
            return WasmResult.BAD_ARGUMENT
        return self.host.continue_stream(self.ctx, stream_type)

    def proxy_continue_request(self) -> int:  # ABI 0.1.0
        return self.proxy_continue_stream(StreamType.REQUEST)

    def proxy_continue_response(self) -> int:  # ABI 0.1.0
        return self.proxy_continue_stream(StreamType.RESPONSE)

    def proxy_close_stream(self, stream_type: int) -> int:
        stream_type &= U32
        if stream_type > StreamType.UPSTREAM:
            return WasmResult.BAD_ARGUMENT
        return self.host.close_stream(self.ctx, stream_type)

    def proxy_clear_route_cache(self) -> int:
        ctx = self.ctx
        if isinstance(ctx, StreamContext):
            ctx.route_cache_cleared += 1
        return WasmResult.OK

    def proxy_done(self) -> int:
        return self.host.done(self.ctx)

    def proxy_set_effective_context(self, context_id: int) -> int:
        return WasmResult.OK if self.host.set_effective_context(context_id & U32) else WasmResult.BAD_ARGUMENT

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
        return self.host.set_shared_data(key, value, cas & U32)

    def proxy_register_shared_queue(self, name_ptr: int, name_size: int, token_ptr: int) -> int:
        name = self._key(name_ptr, name_size)
        root = self.ctx.root_context
        if root is None:
            return WasmResult.BAD_ARGUMENT
        self.vm.write_u32(token_ptr, self.host.register_queue(name, root.id))
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
        return self.host.enqueue(token & U32, data)

    def proxy_dequeue_shared_queue(self, token: int, ptr_ptr: int, size_ptr: int) -> int:
        queue = self.host.shared.queues.get(token & U32)
        if queue is None:
            return WasmResult.NOT_FOUND
        if not queue[2]:
            return WasmResult.EMPTY
        self.vm.copy_out(queue[2][0], ptr_ptr, size_ptr)
        queue[2].pop(0)
        return WasmResult.OK

    # -- metrics --------------------------------------------------------------------------------

    def proxy_define_metric(self, kind: int, name_ptr: int, name_size: int, id_ptr: int) -> int:
        kind &= U32
        name = self._key(name_ptr, name_size)
        if kind > MetricType.HISTOGRAM:
            return WasmResult.BAD_ARGUMENT
        self.vm.write_u32(id_ptr, self.host.define_metric(kind, name))
        return WasmResult.OK

    def proxy_increment_metric(self, metric_id: int, offset: int) -> int:
        metric = self.host.metric_by_id.get(metric_id & U32)
        kind = metric_id & 3
        if kind == MetricType.HISTOGRAM or kind == 3:
            return WasmResult.BAD_ARGUMENT
        if metric is None:
            return WasmResult.NOT_FOUND
        if kind == MetricType.COUNTER:
            if offset <= 0:
                return WasmResult.BAD_ARGUMENT
            metric.value += offset
        else:
            metric.value = (metric.value + offset) & 0xFFFFFFFFFFFFFFFF  # Envoy's gauges are uint64
        return WasmResult.OK

    def proxy_record_metric(self, metric_id: int, value: int) -> int:
        metric = self.host.metric_by_id.get(metric_id & U32)
        if metric is None:
            return WasmResult.NOT_FOUND
        value &= 0xFFFFFFFFFFFFFFFF
        if metric.kind == MetricType.COUNTER:
            metric.value += value
        elif metric.kind == MetricType.GAUGE:
            metric.value = value
        else:
            metric.samples.append(value)
        return WasmResult.OK

    def proxy_get_metric(self, metric_id: int, result_ptr: int) -> int:
        kind = metric_id & 3
        if kind not in (MetricType.COUNTER, MetricType.GAUGE):
            return WasmResult.BAD_ARGUMENT
        metric = self.host.metric_by_id.get(metric_id & U32)
        if metric is None:
            return WasmResult.NOT_FOUND
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
        result, token = self.host.http_call(self.ctx, upstream, headers, body, trailers, timeout_ms)
        if result == WasmResult.OK:
            self.vm.write_u32(token_ptr, token)
        return result

    def proxy_grpc_call(self, service_ptr: int, service_size: int, name_ptr: int, name_size: int, method_ptr: int,
                        method_size: int, metadata_ptr: int, metadata_size: int, message_ptr: int,
                        message_size: int, timeout_ms: int, token_ptr: int) -> int:
        service = self.vm.read(service_ptr, service_size)
        name, method = self._key(name_ptr, name_size), self._key(method_ptr, method_size)
        metadata = parse_pairs(self.vm.read(metadata_ptr, metadata_size))
        message = self.vm.read(message_ptr, message_size)
        result, token = self.host.grpc_call(self.ctx, service, name, method, metadata, message, timeout_ms & U32)
        if result == WasmResult.OK:
            self.vm.write_u32(token_ptr, token)
        return result

    def proxy_grpc_stream(self, service_ptr: int, service_size: int, name_ptr: int, name_size: int,
                          method_ptr: int, method_size: int, metadata_ptr: int, metadata_size: int,
                          token_ptr: int) -> int:
        service = self.vm.read(service_ptr, service_size)
        name, method = self._key(name_ptr, name_size), self._key(method_ptr, method_size)
        metadata = parse_pairs(self.vm.read(metadata_ptr, metadata_size))
        result, token = self.host.grpc_call(self.ctx, service, name, method, metadata, b"", 0, stream=True)
        if result == WasmResult.OK:
            self.vm.write_u32(token_ptr, token)
        return result

    def proxy_grpc_send(self, token: int, message_ptr: int, message_size: int, end_stream: int) -> int:
        message = self.vm.read(message_ptr, message_size)
        return self.host.grpc_send(token & U32, message, bool(end_stream))

    def proxy_grpc_cancel(self, token: int) -> int:
        return self.host.grpc_end(token & U32)

    def proxy_grpc_close(self, token: int) -> int:
        return self.host.grpc_end(token & U32)

    def proxy_call_foreign_function(self, name_ptr: int, name_size: int, args_ptr: int, args_size: int,
                                    results_ptr: int, results_size_ptr: int) -> int:
        name = self._key(name_ptr, name_size)
        args = self.vm.read(args_ptr, args_size)
        result, data = self.host.foreign_function(self.ctx, name, args)
        if result == WasmResult.OK:
            self.vm.copy_out(data or b"", results_ptr, results_size_ptr)
        return result

    # -- WASI (what Envoy provides) -------------------------------------------------------------

    def wasi_fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        if fd == 1:
            level = WASI_STDOUT_LEVEL
        elif fd == 2:
            level = WASI_STDERR_LEVEL
        else:
            return EBADF
        chunks = []
        for i in range(iovs_len & U32):
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
        self.vm.write_u32_pair(count_ptr, 0, size_ptr, 0)
        return 0

    def wasi_args_get(self, argv_ptr: int, buf_ptr: int) -> int:
        return 0

    def wasi_args_sizes_get(self, argc_ptr: int, size_ptr: int) -> int:
        self.vm.write_u32_pair(argc_ptr, 0, size_ptr, 0)
        return 0

    def wasi_clock_time_get(self, clock_id: int, precision: int, time_ptr: int) -> int:
        if clock_id == 0:
            value = self.host.clock.now_ns()
        elif clock_id == 1:
            value = self.host.clock.monotonic_ns()
        else:
            return ENOTSUP
        self.vm.write_u64(time_ptr, value)
        return 0

    def wasi_random_get(self, buf_ptr: int, buf_len: int) -> int:
        buf_len &= U32
        if buf_len > 64 * 1024:
            return EINVAL
        if buf_len:
            self.vm.write(buf_ptr, os.urandom(buf_len))
        return 0

    def wasi_proc_exit(self, code: int) -> None:
        raise ProcExit(code)

    def wasi_sched_yield(self) -> int:
        return 0


def foreign_function(name: str, args: bytes) -> tuple[int, bytes | None]:
    """The foreign functions Envoy registers that make sense without a proxy around them."""
    if name == "compress":
        return WasmResult.OK, zlib.compress(args)
    if name == "uncompress":
        try:
            return WasmResult.OK, zlib.decompress(args)
        except zlib.error:
            return WasmResult.SERIALIZATION_FAILURE, None
    if name in ("declare_property", "clear_route_cache"):
        return WasmResult.OK, b""
    return WasmResult.NOT_FOUND, None


__all__ = ["Abi", "ENV_SIGNATURES", "WASI_SIGNATURES", "foreign_function", "Metric"]

"""``PluginHost``: one plugin on one VM, driven the way Envoy drives it.

Low level (mirrors the ABI, like the Go SDK's ``proxytest``)::

    host = PluginHost("build/filter.wasm", plugin_config='{"x": 1}', root_id="my-filter")
    host.start()                                   # _initialize/_start, on_context_create, on_vm_start, on_configure
    stream = host.http_stream()                    # proxy_on_context_create(ctx, root)
    stream.request_headers([(":method", "GET"), (":path", "/"), (":authority", "a")], end_of_stream=True)
    stream.request_header_map.pairs                # what the filter left there
    stream.finish()                                # proxy_on_log, proxy_on_done, proxy_on_delete
    host.shutdown()                                # proxy_on_done / proxy_on_delete of the root context

High level: ``stream.exchange(headers, body, upstream)`` runs a whole request the way Envoy's filter
chain would and returns an ``Observation``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..spec import UpstreamAnswer
from ..verdict import HttpMessage, LogRecord, Observation
from .abi import Abi
from .state import (
    LOG_LEVEL_NAMES, Action, Buffer, BufferType, Context, HeaderMap, HttpCall, LocalResponse, MapType,
    Pairs, RootContext, SharedState, StreamContext, WasmResult,
)
from .vm import CompiledModule, GuestFailure, WasmVm, compiled_module

class PluginFailed(Exception):
    """The plugin could not be started or configured (Envoy would reject this configuration)."""

    def __init__(self, message: str, failure: GuestFailure | None = None):
        super().__init__(message)
        self.failure = failure


class StreamPaused(Exception):
    pass


class PluginHost:
    def __init__(self, wasm: Path | str | bytes, *, plugin_config: str | bytes = "", vm_config: str | bytes = "",
                 root_id: str = "", vm_id: str = "", plugin_name: str | None = None, log_level: str = "trace",
                 now_ns: Callable[[], int] | None = None, name: str = "filter.wasm", retire_old_roots: bool = True):
        if isinstance(wasm, (bytes, bytearray)):
            self.compiled: CompiledModule = compiled_module(name, bytes(wasm))
        else:
            self.compiled = compiled_module(wasm)
        self.plugin_config = _bytes(plugin_config)
        self.vm_config = _bytes(vm_config)
        self.root_id = root_id
        self.vm_id = vm_id
        self.plugin_name = plugin_name if plugin_name is not None else root_id
        self.log_level = LOG_LEVEL_NAMES.index(log_level)
        self.now_ns = now_ns or time.time_ns
        self.shared = SharedState()
        self.plugin_logs: list[LogRecord] = []  # logs outside any HTTP stream (start, configure, ticks, shutdown)
        self.failures: list[GuestFailure] = []  # VM-level failures: start, configure, shutdown
        self.unimplemented: dict[str, str] = {}  # "module.name" -> why, for imports this host does not provide
        self.http_calls: dict[int, HttpCall] = {}  # dispatched by the filter, not answered yet
        self.status: tuple[int, str] = (0, "")
        # A configuration change: True = retire the old root context (Envoy's behaviour when a filter
        # configuration is replaced); False = keep one live root context per configuration (Envoy's
        # behaviour when several filter configurations share one VM, e.g. one per listener/route).
        self.retire_old_roots = retire_old_roots
        self.vm: WasmVm | None = None
        self.root: RootContext | None = None
        self._roots: dict[bytes, RootContext] = {}
        self.failed: GuestFailure | None = None  # the VM trapped: Envoy would not run it again
        self.vm_starts = 0
        self._contexts: dict[int, Context] = {}
        self._next_id = 1
        self._next_token = 1
        self._current: Context | None = None
        self._effective: int | None = None
        self._depth = 0
        self._ready_queues: list[int] = []
        self._vm_context = Context(0, None)

    @property
    def abi_version(self) -> str | None:
        return self.compiled.abi_version

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> RootContext:
        """Create a fresh VM and start the plugin on it. Raises ``PluginFailed``."""
        self._new_vm()
        return self._start_root(self.plugin_config)

    def ensure_started(self, plugin_config: str | bytes | None = None) -> RootContext:
        """Start (or, after a trap, restart) the VM; switch the plugin configuration if it differs."""
        config = self.plugin_config if plugin_config is None else _bytes(plugin_config)
        if self.vm is None or self.failed is not None or self.root is None:
            self.plugin_config = config
            return self.start()
        if config != self.root.plugin_config:
            if not self.retire_old_roots:
                root = self._roots.get(config) or self._start_root(config)
                self.root = root
                self.plugin_config = config
                return root
            root = self.reconfigure(config)
            if self.failed is not None:
                raise PluginFailed("the previous plugin configuration's root context failed while Envoy "
                                   "retired it (its VM is now failed)", self.failed)
            return root
        return self.root

    def reconfigure(self, plugin_config: str | bytes) -> RootContext:
        """A new plugin (root context) with this configuration on the same VM, as Envoy does on a
        configuration update; the old root context is then retired (on_done, on_delete)."""
        old = self.root
        self.plugin_config = _bytes(plugin_config)
        root = self._start_root(self.plugin_config)
        if old is not None:
            self._retire_root(old)
        return root

    def shutdown(self) -> list[GuestFailure]:
        """Retire the root context like Envoy on exit; returns the failures this caused (also in ``failures``)."""
        failures: list[GuestFailure] = []
        roots = list(self._roots.values()) if not self.retire_old_roots else [self.root] if self.root else []
        for root in roots:
            if self.vm is None or self.failed is not None:
                break
            failures += self._retire_root(root)
        self.root = None
        self._roots = {}
        self.vm = None
        return failures

    def _new_vm(self) -> None:
        self.vm = None
        self.root = None
        self._roots = {}
        self.failed = None
        self._contexts = {}
        self._next_id = 1
        vm = WasmVm(self.compiled, Abi.binder(self))
        self.vm = vm
        self.vm_starts += 1
        for entry in ("_initialize", "_start"):
            if vm.has(entry):
                self._call(self._vm_context, entry)
                break

    def _start_root(self, plugin_config: bytes) -> RootContext:
        root = RootContext(self._new_id(), self.root_id, plugin_config, self.vm_config)
        self._contexts[root.id] = root
        self._call(root, "proxy_on_context_create", root.id, 0)
        root.created = True
        if self._call(root, "proxy_on_vm_start", root.id, len(self.vm_config)) == 0:
            raise PluginFailed("proxy_on_vm_start returned false: the plugin refused to start "
                               "(Envoy rejects the filter configuration)")
        root.configuring = True
        try:
            ok = self._call(root, "proxy_on_configure", root.id, len(plugin_config))
        finally:
            root.configuring = False
        if ok == 0:
            raise PluginFailed(f"proxy_on_configure returned false for the plugin configuration "
                               f"{_show(plugin_config)} (Envoy rejects the filter configuration)")
        self.root = root
        self._roots[plugin_config] = root
        return root

    def _retire_root(self, root: RootContext) -> list[GuestFailure]:
        before = len(self.failures)
        try:
            self._call(root, "proxy_on_done", root.id)
            self._call(root, "proxy_on_delete", root.id)
        except GuestFailure:
            pass  # recorded in self.failures by _call
        root.deleted = True
        self._contexts.pop(root.id, None)
        if self._roots.get(root.plugin_config) is root:
            del self._roots[root.plugin_config]
        return self.failures[before:]

    def tick(self) -> None:
        """One timer tick of the root context (proxy_on_tick), as Envoy fires it every tick period."""
        if self.root is not None:
            self._call(self.root, "proxy_on_tick", self.root.id)

    # -- HTTP streams ---------------------------------------------------------------------------

    def http_stream(self) -> "HttpStream":
        if self.root is None:
            raise PluginFailed("the plugin is not started")
        ctx = StreamContext(self._new_id(), self.root)
        self._contexts[ctx.id] = ctx
        stream = HttpStream(self, ctx)
        self._call(ctx, "proxy_on_context_create", ctx.id, self.root.id)
        ctx.created = True
        return stream

    def respond_http_call(self, token: int, headers: Pairs = (), body: bytes = b"", trailers: Pairs = ()) -> None:
        """Answer an http call the filter dispatched (proxy_on_http_call_response on its root context)."""
        call = self.http_calls.pop(token)
        root = self._contexts.get(call.context_id)
        if not isinstance(root, RootContext):
            return
        root.http_call_response = (HeaderMap(headers, writable=False), Buffer(body, writable=False),
                                   HeaderMap(trailers, writable=False))
        try:
            self._call(root, "proxy_on_http_call_response", root.id, token, len(headers), len(body), len(trailers))
        finally:
            root.http_call_response = None

    # -- what the ABI functions call ------------------------------------------------------------

    def context(self) -> Context:
        if self._effective is not None:
            ctx = self._contexts.get(self._effective)
            if ctx is not None:
                return ctx
        return self._current or self._vm_context

    def set_effective_context(self, context_id: int) -> bool:
        if context_id not in self._contexts:
            return False
        self._effective = context_id
        return True

    def log(self, level: int, message: str) -> None:
        if level < self.log_level:
            return
        record = LogRecord(LOG_LEVEL_NAMES[level], message)
        ctx = self.context()
        (ctx.logs if isinstance(ctx, StreamContext) else self.plugin_logs).append(record)

    def note_unimplemented(self, name: str, why: str) -> None:
        self.unimplemented.setdefault(name, why)

    def note_unimplemented_call(self, name: str) -> None:
        pass

    def send_local_response(self, ctx: Context, status: int, details: str, body: bytes, headers: Pairs,
                            grpc_status: int) -> None:
        if isinstance(ctx, StreamContext) and ctx.local_response is None:
            ctx.local_response = LocalResponse(status, details, body, list(headers), grpc_status)
            ctx.local_reply_sent = True

    def done(self, ctx: Context) -> int:
        root = ctx.root or ctx
        if isinstance(root, RootContext):
            root.done_called = True
            return WasmResult.OK
        return WasmResult.NOT_FOUND

    def queue_ready(self, token: int) -> None:
        self._ready_queues.append(token)

    def http_call(self, ctx: Context, upstream: str, headers: Pairs, body: bytes, trailers: Pairs,
                  timeout_ms: int) -> tuple[int, int]:
        names = {k.lower() for k, _ in headers}
        if not {":method", ":path", ":authority"} <= names:
            return WasmResult.BAD_ARGUMENT, 0
        root = ctx.root or ctx
        token = self._next_token
        self._next_token += 1
        self.http_calls[token] = HttpCall(token, root.id, upstream, list(headers), body, list(trailers), timeout_ms)
        return WasmResult.OK, token

    def get_property(self, ctx: Context, path: tuple[str, ...]) -> bytes | None:
        from .properties import property_value
        value = property_value(self, ctx, path)
        if value is not None:
            return value
        for c in (ctx, ctx.root):
            if c is not None and path in c.properties:
                return c.properties[path]
        return None

    # -- calling into the guest -----------------------------------------------------------------

    def _new_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    def _call(self, ctx: Context, name: str, *args: int) -> int | None:
        if self.vm is None or self.failed is not None:
            raise PluginFailed("the VM is not running")
        saved = (self._current, self._effective)
        self._current, self._effective = ctx, None
        self._depth += 1
        try:
            return self.vm.call(name, *args)
        except GuestFailure as failure:
            last = ctx.logs[-1].message if isinstance(ctx, StreamContext) and ctx.logs else (
                self.plugin_logs[-1].message if self.plugin_logs and not isinstance(ctx, StreamContext) else None)
            if last and last.lower().startswith("abort"):
                failure.reason += f" (the module logged: {last})"
            self.failed = failure
            if not isinstance(ctx, StreamContext):
                self.failures.append(failure)
            raise
        finally:
            self._depth -= 1
            self._current, self._effective = saved
            if self._depth == 0 and self._ready_queues and self.failed is None:
                self._deliver_queues()

    def _deliver_queues(self) -> None:
        ready, self._ready_queues = self._ready_queues, []
        for token in ready:
            owner = self._contexts.get(self.shared.queue_owner.get(token, -1))
            if isinstance(owner, RootContext):
                self._call(owner, "proxy_on_queue_ready", owner.id, token)


class HttpStream:
    """One HTTP stream through the filter. Each method is one ABI callback."""

    def __init__(self, host: PluginHost, ctx: StreamContext):
        self.host = host
        self.ctx = ctx
        self.finished = False

    @property
    def id(self) -> int:
        return self.ctx.id

    @property
    def logs(self) -> list[LogRecord]:
        return self.ctx.logs

    @property
    def local_response(self) -> LocalResponse | None:
        return self.ctx.local_response

    @property
    def request_header_map(self) -> HeaderMap | None:
        return self.ctx.maps.get(MapType.REQUEST_HEADERS)

    @property
    def response_header_map(self) -> HeaderMap | None:
        return self.ctx.maps.get(MapType.RESPONSE_HEADERS)

    def _callback(self, name: str, *args: int) -> Action | int:
        self.ctx.local_reply_sent = False
        result = self.host._call(self.ctx, name, self.ctx.id, *args)
        if self.ctx.local_reply_sent:  # Envoy: stopNextIteration after a local reply
            return Action.STOP_ITERATION
        return Action.of(result)

    def request_headers(self, headers: Pairs, end_of_stream: bool = True) -> Action | int:
        self.ctx.maps[MapType.REQUEST_HEADERS] = HeaderMap(headers)
        return self._callback("proxy_on_request_headers", len(headers), int(end_of_stream))

    def request_body(self, body: bytes, end_of_stream: bool = True) -> Action | int:
        buf = self.ctx.buffers.setdefault(BufferType.HTTP_REQUEST_BODY, Buffer())
        buf.data += body
        return self._callback("proxy_on_request_body", len(buf.data), int(end_of_stream))

    def response_headers(self, headers: Pairs, end_of_stream: bool = True) -> Action | int:
        self.ctx.maps[MapType.RESPONSE_HEADERS] = HeaderMap(headers)
        return self._callback("proxy_on_response_headers", len(headers), int(end_of_stream))

    def response_body(self, body: bytes, end_of_stream: bool = True) -> Action | int:
        buf = self.ctx.buffers.setdefault(BufferType.HTTP_RESPONSE_BODY, Buffer())
        buf.data += body
        return self._callback("proxy_on_response_body", len(buf.data), int(end_of_stream))

    def finish(self) -> None:
        """End of stream as Envoy ends it: access log (proxy_on_log), then onDestroy (on_done, on_delete)."""
        if self.finished:
            return
        self.finished = True
        for hmap in self.ctx.maps.values():
            hmap.writable = False
        self.ctx.buffers.clear()
        for name in ("proxy_on_log", "proxy_on_done", "proxy_on_delete"):
            self.host._call(self.ctx, name, self.ctx.id)
        self.ctx.deleted = True
        self.host._contexts.pop(self.ctx.id, None)

    # -- a whole exchange, Envoy style ----------------------------------------------------------

    def exchange(self, headers: Pairs, body: bytes, upstream: UpstreamAnswer | None) -> Observation:
        """Send a request through the filter, let ``upstream`` answer it, and finish the stream.

        The result holds what the upstream received and what the client got; a trap ends the stream
        with ``error`` set (the VM is then marked failed).
        """
        started = time.perf_counter()
        sent: HttpMessage | None = None
        response: HttpMessage | None = None
        error: str | None = None
        try:
            passed = self._phase(MapType.REQUEST_HEADERS, BufferType.HTTP_REQUEST_BODY, 0, headers, body,
                                 "proxy_on_request_headers", "proxy_on_request_body")
            local = self.ctx.local_response
            if self.ctx.closed:
                pass
            elif local is not None:
                response = self._local_reply(local)
            else:
                req_headers, req_body = passed
                sent = _upstream_view(req_headers, req_body)
                if upstream is not None:
                    response = self._respond(upstream)
            if not self.ctx.closed:
                self.finish()
        except StreamPaused as paused:
            error = str(paused)
            self._finish_quietly()
        except GuestFailure as failure:
            error = failure.describe()
        if self.ctx.closed:
            response = None
        return Observation(response=response, upstream_request=sent, logs=tuple(self.ctx.logs), error=error,
                           seconds=time.perf_counter() - started)

    def _finish_quietly(self) -> None:
        try:
            self.finish()
        except GuestFailure:
            pass

    def _phase(self, map_type: int, buffer_type: int, stream_type: int, headers: Pairs, body: bytes,
               on_headers: str, on_body: str) -> tuple[Pairs, bytes]:
        """Headers then body callbacks of one direction; returns the headers and body that pass on."""
        ctx = self.ctx
        ctx.maps[map_type] = HeaderMap(headers)
        ctx.continue_requested[stream_type] = False
        action = self._callback(on_headers, len(headers), int(not body))
        if ctx.local_reply_sent or ctx.closed:
            return [], b""
        hmap = ctx.maps[map_type]
        headers_passed = action == Action.CONTINUE or ctx.continue_requested[stream_type]
        passed_headers = hmap.copy() if headers_passed else None
        if headers_passed:
            hmap.writable = False
        if not body:
            if passed_headers is None:
                raise StreamPaused(_paused(on_headers, action, self.host))
            return passed_headers, b""
        if not (headers_passed or action == Action.STOP_ITERATION):
            raise StreamPaused(_paused(on_headers, action, self.host))
        ctx.continue_requested[stream_type] = False
        buf = ctx.buffers[buffer_type] = Buffer(body)
        body_action = self._callback(on_body, len(body), 1)
        if ctx.local_reply_sent or ctx.closed:
            return [], b""
        if not (body_action == Action.CONTINUE or ctx.continue_requested[stream_type]):
            raise StreamPaused(_paused(on_body, body_action, self.host))
        buf.writable = False
        del ctx.buffers[buffer_type]
        if passed_headers is None:  # StopIteration on headers, released by the body's Continue
            passed_headers = hmap.copy()
            hmap.writable = False
        return passed_headers, bytes(buf.data)

    def _respond(self, upstream: UpstreamAnswer) -> HttpMessage:
        headers = [(":status", str(upstream.status))] + [(k.lower(), v) for k, v in upstream.headers]
        if upstream.body and not any(k == "content-length" for k, _ in headers):
            headers.append(("content-length", str(len(upstream.body))))
        out_headers, out_body = self._phase(MapType.RESPONSE_HEADERS, BufferType.HTTP_RESPONSE_BODY, 1, headers,
                                            upstream.body, "proxy_on_response_headers", "proxy_on_response_body")
        if self.ctx.local_reply_sent:  # a local reply from the response path replaces the upstream's response
            return self._local_reply(self.ctx.local_response)
        return _response(out_headers, out_body)

    def _local_reply(self, local: LocalResponse) -> HttpMessage:
        """Envoy sends a local reply through the encoder path: the filter sees it in on_response_*."""
        headers = local_reply_headers(local)
        out_headers, out_body = self._phase(MapType.RESPONSE_HEADERS, BufferType.HTTP_RESPONSE_BODY, 1, headers,
                                            local.body, "proxy_on_response_headers", "proxy_on_response_body")
        return _response(out_headers, out_body)


def local_reply_headers(local: LocalResponse) -> Pairs:
    """The response headers Envoy builds for sendLocalReply (Utility::prepareLocalReply)."""
    hmap = HeaderMap([(":status", str(local.status))])
    for k, v in local.headers:
        hmap.add(k, v)
    if local.body:
        hmap.replace("content-length", str(len(local.body)))
        if hmap.get("content-type") is None:
            hmap.add("content-type", "text/plain")
    else:
        hmap.remove("content-length")
        hmap.remove("content-type")
    return hmap.copy()


def _upstream_view(headers: Pairs, body: bytes) -> HttpMessage:
    pseudo = dict((k, v) for k, v in headers if k.startswith(":"))
    rest = [(k, v) for k, v in headers if not k.startswith(":") and k != "host"]
    host = pseudo.get(":authority")
    out = ([("host", host)] if host is not None else []) + rest
    return HttpMessage(headers=tuple(out), body=body, method=pseudo.get(":method", ""), path=pseudo.get(":path", ""))


def _response(headers: Pairs, body: bytes) -> HttpMessage:
    status = next((v for k, v in headers if k == ":status"), "0")
    try:
        code = int(status)
    except ValueError:
        code = 0
    return HttpMessage(headers=tuple((k, v) for k, v in headers if not k.startswith(":")), body=body, status=code)


def _paused(callback: str, action: Action | int, host: PluginHost) -> str:
    name = action.name if isinstance(action, Action) else str(action)
    text = (f"stream paused and never resumed: {callback} returned {name} and the filter did not call "
            "proxy_continue_stream (Envoy would hold the request until it times out)")
    if host.http_calls:
        calls = ", ".join(f"to '{c.upstream}'" for c in host.http_calls.values())
        text += f"; http calls still pending: {calls} (the host does not dispatch http calls)"
    return text


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _show(config: bytes) -> str:
    if not config:
        return "(empty)"
    shown = config[:80].decode("utf-8", "replace")
    return repr(shown + ("…" if len(config) > 80 else ""))



"""``PluginHost``: one plugin on one VM, driven the way Envoy drives it.

Low level (mirrors the ABI, like the Go SDK's ``proxytest``)::

    host = PluginHost("build/filter.wasm", plugin_config='{"x": 1}', root_id="my-filter")
    host.start()                                   # _initialize/_start, on_context_create, on_vm_start, on_configure
    stream = host.http_stream()                    # proxy_on_context_create(ctx, root)
    stream.request_headers([(":method", "GET"), (":path", "/"), (":authority", "a")], end_of_stream=True)
    stream.request_header_map.pairs                # what the filter left there
    stream.finish()                                # proxy_on_log, proxy_on_done, proxy_on_delete
    host.metric("my_counter"), host.http_calls, host.advance_time(1000)   # metrics, callouts, ticks
    host.shutdown()                                # proxy_on_done / proxy_on_delete of the root context

High level: ``stream.exchange(headers, body, upstream)`` runs a whole request the way Envoy's filter
chain would (pauses, http calls, local replies included) and returns an ``Observation``.
TCP: ``conn = host.tcp_connection(); conn.downstream_data(b"..."); conn.close_downstream()``.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..spec import UpstreamAnswer
from ..verdict import HttpMessage, LogRecord, Observation
from . import properties as props
from .abi import Abi, foreign_function
from .state import (
    CONNECTION_FAILED, CONNECTION_TERMINATED, GRPC_UNIMPLEMENTED, LOG_LEVEL_NAMES, TIMEOUT_ANSWER, Action, Buffer,
    BufferType, Context, GrpcCall, HeaderMap, HttpCall, HttpCallAnswer, LocalResponse, MapType, Metric, MetricType, Pairs, PeerType, RootContext,
    SharedState, StreamContext, StreamType, TcpContext, VirtualClock, WasmResult,
)
from .vm import DEFAULT_MEMORY_LIMIT, FUEL_PER_CALL, CompiledModule, GuestFailure, WasmVm, compiled_module

# How far the host moves the virtual clock on its own while a stream waits for an event (an http
# call answer, a tick) before it reports the stream as paused forever.
MAX_WAIT_MS = 60_000


class PluginFailed(Exception):
    """The plugin could not be started or configured (Envoy would reject this configuration)."""

    def __init__(self, message: str, failure: GuestFailure | None = None):
        super().__init__(message)
        self.failure = failure


class StreamPaused(Exception):
    pass


HttpAnswerSource = HttpCallAnswer | Callable[[HttpCall], "HttpCallAnswer | None"] | list


class PluginHost:
    """One plugin (root id + configuration) on one VM of ``wasm``.

    Options beyond the plugin's identity:

    - ``properties``: property overrides for every stream (``{"source.address": "10.0.0.1:5000"}``,
      see :mod:`filterkit.host.properties`); ``node``: ``{"id": …, "cluster": …, "metadata": {…}}``;
    - ``http_answers``: ``{cluster: HttpCallAnswer | [answers…] | callable(call) -> answer}`` scripted
      answers; ``http_upstreams``: ``{cluster: "http://host:port"}`` real upstreams; ``clusters``: the
      cluster names that exist (None: every name; a call to an unknown cluster gets BadArgument, as in
      Envoy). A call to a cluster without answer or upstream stays pending until ``respond_http_call``;
    - ``clock``: a ``VirtualClock`` (default: frozen at the current time, moved by ``advance_time``);
      ``now_ns``: a callable for a real clock instead;
    - ``memory_limit`` (bytes of linear memory) and ``fuel`` (wasm instructions per callback): guard rails;
    - ``shared``: a ``SharedState`` to share shared data, queues and metrics with other hosts.
    """

    def __init__(self, wasm: Path | str | bytes, *, plugin_config: str | bytes = "", vm_config: str | bytes = "",
                 root_id: str = "", vm_id: str = "", plugin_name: str | None = None, log_level: str = "trace",
                 now_ns: Callable[[], int] | None = None, clock: VirtualClock | None = None,
                 name: str = "filter.wasm", retire_old_roots: bool = True,
                 properties: Mapping[Any, Any] | None = None, node: Mapping[str, Any] | None = None,
                 http_answers: Mapping[str, HttpAnswerSource] | None = None,
                 http_upstreams: Mapping[str, str] | None = None, clusters: Iterable[str] | None = None,
                 memory_limit: int = DEFAULT_MEMORY_LIMIT, fuel: int = FUEL_PER_CALL,
                 shared: SharedState | None = None, disk_cache: bool = True,
                 listener_port: int = props.LISTENER_PORT, upstream_port: int = props.UPSTREAM_PORT):
        if isinstance(wasm, (bytes, bytearray)):
            self.compiled: CompiledModule = compiled_module(name, bytes(wasm), disk_cache=disk_cache)
        else:
            self.compiled = compiled_module(wasm, disk_cache=disk_cache)
        self.plugin_config = _bytes(plugin_config)
        self.vm_config = _bytes(vm_config)
        self.root_id = root_id
        self.vm_id = vm_id
        self.plugin_name = plugin_name if plugin_name is not None else root_id
        self.log_level = LOG_LEVEL_NAMES.index(log_level)
        self.clock = clock or (VirtualClock(source=now_ns) if now_ns is not None else VirtualClock())
        self.shared = shared if shared is not None else SharedState()
        self.properties = props.normalize(properties)
        self.node = dict(node or {})
        self.http_answers: dict[str, HttpAnswerSource] = dict(http_answers or {})
        self.http_upstreams = dict(http_upstreams or {})
        self.clusters = set(clusters) if clusters is not None else None
        self.memory_limit = memory_limit
        self.fuel = fuel
        self.listener_port = listener_port
        self.upstream_port = upstream_port
        self.plugin_logs: list[LogRecord] = []  # logs outside any stream (start, configure, ticks, shutdown)
        self.failures: list[GuestFailure] = []  # VM-level failures: start, configure, ticks, shutdown
        self.unimplemented: dict[str, str] = {}  # "module.name" -> why, for imports this host does not provide
        self.unimplemented_calls: dict[str, int] = {}
        self.http_calls: dict[int, HttpCall] = {}  # dispatched by the filter, not answered yet
        self.http_call_log: list[HttpCall] = []  # every http call, answered or not, in order
        self.grpc_calls: list[GrpcCall] = []  # every gRPC call/stream (all closed with UNIMPLEMENTED)
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
        self.metric_by_id: dict[int, Metric] = {}
        self._next_metric_id = [0, 1, 2]
        self._contexts: dict[int, Context] = {}
        self._next_id = 1
        self._next_token = 1
        self._next_grpc = [1, 2]  # calls odd, streams even (as proxy-wasm-cpp-host)
        self._grpc_open: dict[int, GrpcCall] = {}
        self._next_connection = 1
        self._current: Context | None = None
        self._effective: int | None = None
        self._depth = 0
        self._after: list[Callable[[], None]] = []
        self._pending_done: set[int] = set()
        self._vm_context = Context(0, None)
        self._active: Context | None = None  # the stream whose exchange is running (log attribution)

    @property
    def abi_version(self) -> str | None:
        return self.compiled.abi_version

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> RootContext:
        """Create a fresh VM and start the plugin on it. Raises ``PluginFailed``."""
        self._new_vm()
        return self._start_root(self.plugin_config)

    def restart(self) -> RootContext:
        """A fresh VM with the current plugin configuration (shared data and metrics survive, as in Envoy)."""
        return self.start()

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

    def validate_configuration(self, plugin_config: str | bytes) -> bool:
        """proxy_validate_configuration(root, size) on the running plugin's root context, with the
        configuration readable as the plugin configuration buffer (a module without the export: True)."""
        if self.vm is None or self.root is None:
            self.start()
        root = self.root
        assert root is not None
        if not self.vm.has("proxy_validate_configuration"):
            return True
        config = _bytes(plugin_config)
        saved = root.plugin_config
        root.plugin_config, root.configuring = config, True
        try:
            return bool(self._call(root, "proxy_validate_configuration", root.id, len(config)))
        finally:
            root.plugin_config, root.configuring = saved, False

    def shutdown(self) -> list[GuestFailure]:
        """Retire the root contexts like Envoy on exit; returns the failures this caused (also in ``failures``)."""
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
        self._after = []
        self._pending_done = set()
        self.metric_by_id = {}
        self._next_metric_id = [0, 1, 2]
        self.http_calls = {}
        self._grpc_open = {}
        try:
            vm = WasmVm(self.compiled, Abi.binder(self), memory_limit=self.memory_limit, fuel=self.fuel)
        except GuestFailure as failure:
            self.failures.append(failure)
            raise PluginFailed(f"the module could not be instantiated: {failure.reason}", failure) from None
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
            done = self._call(root, "proxy_on_done", root.id)
            if done == 0 and self.vm is not None and self.vm.has("proxy_on_done"):
                # the plugin asked for time (proxy_done() later); Envoy deletes it when it calls back
                self._pending_done.add(root.id)
            else:
                self._call(root, "proxy_on_delete", root.id)
        except (GuestFailure, PluginFailed):
            pass  # recorded in self.failures by _call
        root.deleted = True
        if root.id not in self._pending_done:
            self._contexts.pop(root.id, None)
        if self._roots.get(root.plugin_config) is root:
            del self._roots[root.plugin_config]
        return self.failures[before:]

    # -- time -----------------------------------------------------------------------------------

    @property
    def now_ns(self) -> int:
        return self.clock.now_ns()

    def set_tick_period(self, root: RootContext, period_ms: int) -> None:
        root.tick_period_ms = period_ms
        root.next_tick_ns = self.clock.now_ns() + period_ms * 1_000_000 if period_ms else None

    def tick(self) -> None:
        """One timer tick of the current root context (proxy_on_tick), whatever its tick period."""
        if self.root is not None:
            self._tick(self.root)

    def _tick(self, root: RootContext) -> None:
        try:
            self._call(root, "proxy_on_tick", root.id)
        except GuestFailure:
            pass  # recorded in self.failures

    def advance_time(self, ms: float) -> int:
        """Move the virtual clock forward by ``ms``, firing what falls due on the way, in time order:
        proxy_on_tick of each root context every tick period, http call answers (scripted delays,
        timeouts). Returns the number of events fired."""
        target = self.clock.now_ns() + int(ms * 1_000_000)
        fired = 0
        while True:
            due = self._next_event(target)
            if due is None:
                break
            when, action = due
            self.clock.set(max(when, self.clock.now_ns()))
            action()
            fired += 1
            if self.vm is None or self.failed is not None:
                break
        self.clock.set(max(target, self.clock.now_ns()))
        return fired

    def _next_event(self, limit: int | None) -> tuple[int, Callable[[], None]] | None:
        best: tuple[int, Callable[[], None]] | None = None
        if self.vm is not None and self.failed is None:
            for ctx in list(self._contexts.values()):
                if isinstance(ctx, RootContext) and ctx.next_tick_ns is not None and not ctx.deleted:
                    if best is None or ctx.next_tick_ns < best[0]:
                        best = (ctx.next_tick_ns, self._tick_action(ctx))
        for call in self.http_calls.values():
            due = call.due_ns
            timeout = call.dispatched_ns + call.timeout_ms * 1_000_000 if call.timeout_ms > 0 else None
            if timeout is not None and (due is None or timeout < due):
                candidate = (timeout, self._answer_action(call.token, TIMEOUT_ANSWER))
            elif due is not None:
                candidate = (due, self._answer_action(call.token, call.scheduled))
            else:
                continue
            if best is None or candidate[0] < best[0]:
                best = candidate
        if best is None or (limit is not None and best[0] > limit):
            return None
        return best

    def _tick_action(self, root: RootContext) -> Callable[[], None]:
        def fire() -> None:
            period = root.tick_period_ms * 1_000_000
            root.next_tick_ns = (root.next_tick_ns or self.clock.now_ns()) + period if period else None
            self._tick(root)
        return fire

    def _answer_action(self, token: int, answer: HttpCallAnswer | None) -> Callable[[], None]:
        return lambda: self.respond_http_call(token, answer) if token in self.http_calls else None

    def wait_for(self, condition: Callable[[], bool], max_ms: float = MAX_WAIT_MS) -> bool:
        """Let virtual time pass, event by event (ticks, http call answers), until ``condition()`` holds
        or nothing more is due within ``max_ms``."""
        limit = self.clock.now_ns() + int(max_ms * 1_000_000)
        while not condition():
            due = self._next_event(limit)
            if due is None:
                return condition()
            when, action = due
            self.clock.set(max(when, self.clock.now_ns()))
            action()
            if self.vm is None or self.failed is not None:
                break
        return condition()

    # -- HTTP streams and TCP connections -------------------------------------------------------

    def http_stream(self, properties: Mapping[Any, Any] | None = None) -> "HttpStream":
        """A new HTTP stream context (proxy_on_context_create(ctx, root))."""
        if self.root is None:
            raise PluginFailed("the plugin is not started")
        ctx = StreamContext(self._new_id(), self.root)
        self._init_stream(ctx, properties)
        stream = HttpStream(self, ctx)
        self._call(ctx, "proxy_on_context_create", ctx.id, self.root.id)
        ctx.created = True
        return stream

    def tcp_connection(self, properties: Mapping[Any, Any] | None = None) -> "TcpConnection":
        """A new TCP connection through the plugin as a network filter (proxy_on_context_create,
        proxy_on_new_connection); see ``TcpConnection``."""
        if self.root is None:
            raise PluginFailed("the plugin is not started")
        ctx = TcpContext(self._new_id(), self.root)
        self._init_stream(ctx, properties)
        conn = TcpConnection(self, ctx)
        self._call(ctx, "proxy_on_context_create", ctx.id, self.root.id)
        ctx.created = True
        conn.new_connection_action = Action.of(self._call(ctx, "proxy_on_new_connection", ctx.id))
        return conn

    def _init_stream(self, ctx, properties) -> None:
        self._contexts[ctx.id] = ctx
        ctx.properties = props.normalize(properties)
        ctx.info.start_ns = self.clock.now_ns()
        ctx.info.connection_id = self._next_connection
        ctx.info.source_port = 40000 + self._next_connection % 20000
        self._next_connection += 1

    # -- http calls -----------------------------------------------------------------------------

    def http_call(self, ctx: Context, upstream: str, headers: Pairs, body: bytes, trailers: Pairs,
                  timeout_ms: int) -> tuple[int, int]:
        if timeout_ms < 0:
            return WasmResult.BAD_ARGUMENT, 0
        if self.clusters is not None and upstream not in self.clusters and upstream not in self.http_answers \
                and upstream not in self.http_upstreams:
            return WasmResult.BAD_ARGUMENT, 0  # Envoy: no such cluster
        names = {k.lower() for k, _ in headers}
        if not {":method", ":path", ":authority"} <= names:
            return WasmResult.BAD_ARGUMENT, 0
        root = ctx.root_context
        if root is None:
            return WasmResult.BAD_ARGUMENT, 0
        headers = [(k.lower(), v) for k, v in headers]
        if body:
            headers = [(k, v) for k, v in headers if k != "content-length"] + [("content-length", str(len(body)))]
        token = self._next_token
        self._next_token += 1
        call = HttpCall(token, root.id, upstream, headers, body, list(trailers), timeout_ms,
                        dispatched_ns=self.clock.now_ns())
        self.http_calls[token] = call
        self.http_call_log.append(call)
        answer = self._scripted_answer(call)
        if answer is not None:
            if answer.delay_ms > 0:
                call.scheduled, call.due_ns = answer, call.dispatched_ns + int(answer.delay_ms * 1_000_000)
            else:
                self._after.append(lambda: self.respond_http_call(token, answer) if token in self.http_calls else None)
        elif upstream in self.http_upstreams:
            self._after.append(lambda: self._forward_http_call(call))
        return WasmResult.OK, token

    def _scripted_answer(self, call: HttpCall) -> HttpCallAnswer | None:
        source = self.http_answers.get(call.upstream)
        if source is None:
            return None
        if isinstance(source, HttpCallAnswer):
            return source
        if isinstance(source, list):
            if not source:
                return None
            return source.pop(0) if len(source) > 1 else source[0]
        return source(call)

    def _forward_http_call(self, call: HttpCall) -> None:
        """Send the call to its real upstream (``http_upstreams``) and deliver the answer."""
        if call.token not in self.http_calls:
            return
        base = urllib.parse.urlsplit(self.http_upstreams[call.upstream])
        conn_cls = http.client.HTTPSConnection if base.scheme == "https" else http.client.HTTPConnection
        timeout = call.timeout_ms / 1000 if call.timeout_ms > 0 else None
        headers = [(k, v) for k, v in call.headers if not k.startswith(":")]
        headers = [("host", call.authority)] + [(k, v) for k, v in headers if k != "host"]
        path = (base.path.rstrip("/") + call.path) if base.path not in ("", "/") else call.path
        try:
            conn = conn_cls(base.hostname, base.port, timeout=timeout)
            try:
                conn.putrequest(call.method, path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders(call.body or None)
                resp = conn.getresponse()
                body = resp.read()
                answer = HttpCallAnswer(resp.status, tuple((k.lower(), v) for k, v in resp.getheaders()), body)
            finally:
                conn.close()
        except TimeoutError:
            answer = TIMEOUT_ANSWER
        except (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead):
            answer = CONNECTION_TERMINATED
        except OSError:
            answer = CONNECTION_FAILED
        self.respond_http_call(call.token, answer)

    def respond_http_call(self, token: int, answer: HttpCallAnswer | None = None, *, status: int | None = None,
                          headers: Iterable[tuple[str, str]] = (), body: bytes | str = b"",
                          trailers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer an http call the filter dispatched: proxy_on_http_call_response on its root context
        (``answer``, or ``status``/``headers``/``body``/``trailers``; ``HttpCallAnswer(reset=True)``
        delivers a connection failure)."""
        call = self.http_calls.pop(token, None)
        if call is None:
            raise ValueError(f"no pending http call with token {token} (pending: {sorted(self.http_calls)})")
        if answer is None:
            answer = HttpCallAnswer(status or 200, tuple(headers), _bytes(body), tuple(trailers))
        call.answer = answer
        root = self._contexts.get(call.context_id)
        if not isinstance(root, RootContext) or self.vm is None or self.failed is not None:
            return
        if answer.reset:
            self.status = (WasmResult.BROKEN_CONNECTION, "reset")
            try:
                self._call(root, "proxy_on_http_call_response", root.id, token, 0, 0, 0)
            finally:
                self.status = (0, "")
            return
        header_pairs = answer.header_pairs()
        root.received_maps = {MapType.HTTP_CALL_RESPONSE_HEADERS: HeaderMap(header_pairs, writable=False),
                              MapType.HTTP_CALL_RESPONSE_TRAILERS: HeaderMap(answer.trailers, writable=False)}
        root.http_call_body = Buffer(answer.body, writable=False)
        try:
            self._call(root, "proxy_on_http_call_response", root.id, token, len(header_pairs), len(answer.body),
                       len(answer.trailers))
        finally:
            root.received_maps = {}
            root.http_call_body = None

    def fail_http_call(self, token: int) -> None:
        """The call's connection failed (Envoy: on_http_call_response with 0/0/0, status 11 "reset")."""
        self.respond_http_call(token, HttpCallAnswer(reset=True))

    # -- gRPC -----------------------------------------------------------------------------------

    def grpc_call(self, ctx: Context, service: bytes, service_name: str, method: str, metadata: Pairs,
                  message: bytes, timeout_ms: int, stream: bool = False) -> tuple[int, int]:
        root = ctx.root_context
        if root is None:
            return WasmResult.BAD_ARGUMENT, 0
        cluster = _cluster_name(service)
        if cluster is not None and self.clusters is not None and cluster not in self.clusters:
            return WasmResult.PARSE_FAILURE, 0  # Envoy: neither a GrpcService nor a known cluster
        slot = 1 if stream else 0
        token = self._next_grpc[slot]
        self._next_grpc[slot] += 2
        call = GrpcCall(token, root.id, service, service_name, method, list(metadata), message, stream, timeout_ms)
        self.grpc_calls.append(call)
        self._grpc_open[token] = call
        self._after.append(lambda: self._grpc_unimplemented(call))
        return WasmResult.OK, token

    def _grpc_unimplemented(self, call: GrpcCall) -> None:
        if call.closed or self._grpc_open.get(call.token) is not call:
            return
        call.closed = True
        del self._grpc_open[call.token]
        root = self._contexts.get(call.context_id)
        if not isinstance(root, RootContext):
            return
        self.status = (GRPC_UNIMPLEMENTED, f"filterkit host: gRPC is not implemented "
                                           f"({call.service_name}/{call.method})")
        try:
            self._call(root, "proxy_on_grpc_close", root.id, call.token, GRPC_UNIMPLEMENTED)
        finally:
            self.status = (0, "")

    def grpc_send(self, token: int, message: bytes, end_stream: bool) -> int:
        if token % 2 == 1:
            return WasmResult.BAD_ARGUMENT
        call = self._grpc_open.get(token)
        if call is None:
            return WasmResult.NOT_FOUND
        call.messages.append(message)
        call.message = message
        return WasmResult.OK

    def grpc_end(self, token: int) -> int:
        call = self._grpc_open.pop(token, None)
        if call is None:
            return WasmResult.NOT_FOUND
        call.closed = True
        return WasmResult.OK

    # -- shared data, queues, metrics -------------------------------------------------------------

    def shared_data(self, key: str) -> tuple[bytes, int] | None:
        """(value, cas) of a shared data key of this VM id, None when unset."""
        return self.shared.data.get((self.vm_id, key))

    def set_shared_data(self, key: str, value: bytes | str, cas: int = 0) -> int:
        value = _bytes(value)
        entry = self.shared.data.get((self.vm_id, key))
        if entry is not None and cas and entry[1] != cas:
            return WasmResult.CAS_MISMATCH
        self.shared.data[(self.vm_id, key)] = (value, self.shared.cas())
        return WasmResult.OK

    def register_queue(self, name: str, root_id: int) -> int:
        shared = self.shared
        key = (self.vm_id, name)
        token = shared.queue_tokens.get(key)
        if token is None:
            token = len(shared.queues) + 1
            shared.queue_tokens[key] = token
            shared.queues[token] = (self.vm_id, name, [])
        shared.queue_owner[token] = (self, root_id)
        return token

    def enqueue(self, token: int, data: bytes) -> int:
        queue = self.shared.queues.get(token)
        if queue is None:
            return WasmResult.NOT_FOUND
        queue[2].append(data)
        owner = self.shared.queue_owner.get(token)
        if owner is not None:
            host, root_id = owner
            host._queue_ready(root_id, token)
        return WasmResult.OK

    def enqueue_shared_queue(self, name: str, data: bytes | str, vm_id: str | None = None) -> int:
        """Put ``data`` on a queue the filter registered (proxy_on_queue_ready follows)."""
        token = self.shared.queue_tokens.get((self.vm_id if vm_id is None else vm_id, name))
        if token is None:
            return WasmResult.NOT_FOUND
        return self.enqueue(token, _bytes(data))

    def queue_items(self, name: str) -> list[bytes]:
        token = self.shared.queue_tokens.get((self.vm_id, name))
        return list(self.shared.queues[token][2]) if token is not None else []

    def _queue_ready(self, root_id: int, token: int) -> None:
        def deliver() -> None:
            root = self._contexts.get(root_id)
            if isinstance(root, RootContext) and self.vm is not None and self.failed is None:
                self._call(root, "proxy_on_queue_ready", root.id, token)
        if self._depth > 0:
            self._after.append(deliver)
        else:
            deliver()

    def define_metric(self, kind: int, name: str) -> int:
        self._next_metric_id[kind] += 4  # Envoy: counters 4, 8, …; gauges 5, 9, …; histograms 6, 10, …
        metric_id = self._next_metric_id[kind]
        self.metric_by_id[metric_id] = self.shared.metric(kind, name)
        return metric_id

    @property
    def metrics(self) -> dict[str, int | list[int]]:
        """Every metric the plugin defined: counters and gauges by value, histograms as their samples."""
        return {m.name: (list(m.samples) if m.kind == MetricType.HISTOGRAM else m.value)
                for m in self.shared.metrics.values()}

    def metric(self, name: str) -> int | list[int] | None:
        """A counter's or gauge's value (a histogram: its recorded samples); None when undefined."""
        for kind in (MetricType.COUNTER, MetricType.GAUGE, MetricType.HISTOGRAM):
            m = self.shared.metrics.get((kind, name))
            if m is not None:
                return list(m.samples) if kind == MetricType.HISTOGRAM else m.value
        return None

    # -- memory ---------------------------------------------------------------------------------

    @property
    def memory_size(self) -> int:
        """The VM's linear memory in bytes (0 without a VM)."""
        return self.vm.memory_size() if self.vm is not None else 0

    def memory_growth_per_request(self, requests: int = 1000, *, headers: Pairs | None = None, body: bytes = b"",
                                  upstream: UpstreamAnswer | None = None, warmup: int = 100) -> float:
        """Run ``warmup`` then ``requests`` whole exchanges and return how many bytes of linear memory
        each request added on average (0.0 for a filter that does not leak). Memory grows by 64 KiB
        pages, so the figure is exact to about 65536/requests bytes."""
        if self.vm is None or self.root is None:
            self.start()
        headers = headers or [(":authority", "filterkit.test"), (":path", "/"), (":method", "GET"),
                              (":scheme", "http"), ("x-request-id", "00000000-0000-4000-8000-000000000000")]
        upstream = upstream or UpstreamAnswer(200, (("content-type", "text/plain"),), b"ok")
        for _ in range(warmup):
            self._exchange_or_raise(headers, body, upstream)
        before = self.memory_size
        for _ in range(requests):
            self._exchange_or_raise(headers, body, upstream)
        return (self.memory_size - before) / max(requests, 1)

    def _exchange_or_raise(self, headers: Pairs, body: bytes, upstream: UpstreamAnswer) -> None:
        obs = self.http_stream().exchange(headers, body, upstream)
        if obs.error is not None:
            raise PluginFailed(f"the filter failed during the memory check: {obs.error}")

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
        if isinstance(ctx, (StreamContext, TcpContext)):
            ctx.logs.append(record)
        elif self._active is not None:  # a root-context line while a stream runs: the case's, as on Envoy
            self._active.logs.append(record)
        else:
            self.plugin_logs.append(record)

    def note_unimplemented(self, name: str, why: str) -> None:
        self.unimplemented.setdefault(name, why)

    def note_unimplemented_call(self, name: str) -> None:
        self.unimplemented_calls[name] = self.unimplemented_calls.get(name, 0) + 1

    def get_property(self, ctx: Context, path: tuple[str, ...]) -> bytes | None:
        return props.property_value(self, ctx, path)

    def send_local_response(self, ctx: Context, status: int, details: str, body: bytes, headers: Pairs,
                            grpc_status: int) -> None:
        if isinstance(ctx, StreamContext) and ctx.local_response is None:
            ctx.local_response = LocalResponse(status, details, body, list(headers), grpc_status)
            ctx.local_reply_sent = True

    def continue_stream(self, ctx: Context, stream_type: int) -> int:
        if stream_type == StreamType.UPSTREAM:
            return WasmResult.UNIMPLEMENTED
        if stream_type == StreamType.DOWNSTREAM:
            if isinstance(ctx, TcpContext):
                ctx.continue_requested[StreamType.DOWNSTREAM] = True
            return WasmResult.OK
        if isinstance(ctx, StreamContext):
            ctx.continue_requested[stream_type] = True
            # Envoy forgets the request's maps and body on either continue (Context::continueStream)
            for kind in (MapType.REQUEST_HEADERS, MapType.REQUEST_TRAILERS):
                ctx.maps.pop(kind, None)
            body = ctx.buffers.pop(BufferType.HTTP_REQUEST_BODY, None)
            if body is not None:
                ctx.released[BufferType.HTTP_REQUEST_BODY] = body
        return WasmResult.OK

    def close_stream(self, ctx: Context, stream_type: int) -> int:
        if isinstance(ctx, StreamContext) and stream_type in (StreamType.REQUEST, StreamType.RESPONSE):
            ctx.closed = True
            if ctx.info.response_code_details is None:
                ctx.info.response_code_details = "wasm_close_stream"
        elif isinstance(ctx, TcpContext) and stream_type in (StreamType.DOWNSTREAM, StreamType.UPSTREAM):
            ctx.close_requested.append(stream_type)
        return WasmResult.OK

    def done(self, ctx: Context) -> int:
        root = ctx.root_context
        if root is None or root.id not in self._pending_done:
            return WasmResult.NOT_FOUND
        self._pending_done.discard(root.id)
        root.done_called = True

        def delete() -> None:
            try:
                self._call(root, "proxy_on_delete", root.id)
            finally:
                self._contexts.pop(root.id, None)
        self._after.append(delete)
        return WasmResult.OK

    def foreign_function(self, ctx: Context, name: str, args: bytes) -> tuple[int, bytes | None]:
        if name == "clear_route_cache" and isinstance(ctx, StreamContext):
            ctx.route_cache_cleared += 1
        return foreign_function(name, args)

    # -- calling into the guest -----------------------------------------------------------------

    def _new_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    def _call(self, ctx: Context, name: str, *args: int) -> int | None:
        vm = self.vm
        if vm is None or self.failed is not None:
            raise PluginFailed("the VM is not running")
        saved = (self._current, self._effective)
        self._current, self._effective = ctx, None
        self._depth += 1
        try:
            result = vm.call(name, *args)
        except GuestFailure as failure:
            last = ctx.logs[-1].message if isinstance(ctx, (StreamContext, TcpContext)) and ctx.logs else (
                self.plugin_logs[-1].message if self.plugin_logs and not isinstance(ctx, (StreamContext, TcpContext))
                else None)
            if last and last.lower().startswith("abort"):
                failure.reason += f" (the module logged: {last})"
            self.failed = failure
            self._after = []
            if not isinstance(ctx, (StreamContext, TcpContext)):
                self.failures.append(failure)
            raise
        finally:
            self._depth -= 1
            self._current, self._effective = saved
        if self._depth == 0 and self._after:
            self._run_after()
        return result

    def _run_after(self) -> None:
        """Envoy's "after VM call" actions: deferred deliveries (http call answers, gRPC closes,
        queue notifications, a deferred proxy_on_delete), once the current callback returned."""
        while self._after and self.failed is None and self.vm is not None:
            action = self._after.pop(0)
            action()


class HttpStream:
    """One HTTP stream through the filter. Each method is one ABI callback; the maps and buffers the
    filter touched stay readable here (``request_header_map`` …) after the callback."""

    def __init__(self, host: PluginHost, ctx: StreamContext):
        self.host = host
        self.ctx = ctx
        self.finished = False
        self.memory_before = host.memory_size
        self.memory_after: int | None = None
        self._last_body: dict[int, bytes] = {}

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
    def closed(self) -> bool:
        """The filter reset the stream (proxy_close_stream)."""
        return self.ctx.closed

    @property
    def request_header_map(self) -> HeaderMap | None:
        return self.ctx.last_maps.get(MapType.REQUEST_HEADERS)

    @property
    def response_header_map(self) -> HeaderMap | None:
        return self.ctx.last_maps.get(MapType.RESPONSE_HEADERS)

    @property
    def request_trailer_map(self) -> HeaderMap | None:
        return self.ctx.last_maps.get(MapType.REQUEST_TRAILERS)

    @property
    def response_trailer_map(self) -> HeaderMap | None:
        return self.ctx.last_maps.get(MapType.RESPONSE_TRAILERS)

    @property
    def request_body_data(self) -> bytes | None:
        """The request body as the filter holds it (buffered), or as it last passed on."""
        buf = self.ctx.buffers.get(BufferType.HTTP_REQUEST_BODY)
        return bytes(buf.data) if buf is not None else self._last_body.get(BufferType.HTTP_REQUEST_BODY)

    @property
    def response_body_data(self) -> bytes | None:
        """The response body as the filter holds it (buffered), or as it last passed on."""
        buf = self.ctx.buffers.get(BufferType.HTTP_RESPONSE_BODY)
        return bytes(buf.data) if buf is not None else self._last_body.get(BufferType.HTTP_RESPONSE_BODY)

    def properties(self, values: Mapping[Any, Any]) -> None:
        """Set property overrides for this stream (see :mod:`filterkit.host.properties`)."""
        self.ctx.properties.update(props.normalize(values))

    def _callback(self, name: str, *args: int) -> Action | int:
        self.ctx.local_reply_sent = False
        result = self.host._call(self.ctx, name, self.ctx.id, *args)
        if self.ctx.local_reply_sent:  # Envoy: stopNextIteration after a local reply
            return Action.STOP_ITERATION
        return Action.of(result)

    def _headers_callback(self, kind: int, name: str, headers: Pairs, end_of_stream: bool) -> Action | int:
        ctx = self.ctx
        hmap = HeaderMap(headers)
        ctx.maps[kind] = ctx.last_maps[kind] = hmap
        ctx.end_of_stream = end_of_stream
        if kind == MapType.RESPONSE_HEADERS and ctx.info.response_code is None:
            try:
                ctx.info.response_code = int(hmap.get(":status") or "")
            except ValueError:
                pass
            if ctx.info.response_code_details is None:
                ctx.info.response_code_details = "via_upstream"
        action = self._callback(name, len(hmap), int(end_of_stream))
        if action == Action.CONTINUE:
            ctx.maps.pop(kind, None)
        return action

    def _body_callback(self, kind: int, name: str, data: bytes, end_of_stream: bool) -> Action | int:
        ctx = self.ctx
        buf = ctx.buffers.get(kind)
        if buf is None:
            buf = ctx.buffers[kind] = Buffer()
        buf.data += data
        ctx.end_of_stream = end_of_stream
        if kind == BufferType.HTTP_REQUEST_BODY:
            ctx.info.bytes_received += len(data)
        action = self._callback(name, len(buf.data), int(end_of_stream))
        if action == Action.CONTINUE:
            self._last_body[kind] = bytes(buf.data)
            ctx.buffers.pop(kind, None)
        return action

    def _trailers_callback(self, kind: int, name: str, trailers: Pairs) -> Action | int:
        ctx = self.ctx
        hmap = HeaderMap(trailers)
        ctx.maps[kind] = ctx.last_maps[kind] = hmap
        ctx.end_of_stream = True
        action = self._callback(name, len(hmap))
        if action == Action.CONTINUE:
            ctx.maps.pop(kind, None)
        return action

    def request_headers(self, headers: Pairs, end_of_stream: bool = True) -> Action | int:
        """proxy_on_request_headers(ctx, count, end_of_stream)."""
        return self._headers_callback(MapType.REQUEST_HEADERS, "proxy_on_request_headers", list(headers),
                                      end_of_stream)

    def request_body(self, body: bytes | str, end_of_stream: bool = True) -> Action | int:
        """proxy_on_request_body(ctx, size, end_of_stream): ``body`` is added to what is buffered."""
        return self._body_callback(BufferType.HTTP_REQUEST_BODY, "proxy_on_request_body", _bytes(body),
                                   end_of_stream)

    def request_trailers(self, trailers: Pairs) -> Action | int:
        return self._trailers_callback(MapType.REQUEST_TRAILERS, "proxy_on_request_trailers", list(trailers))

    def request_metadata(self, count: int = 0) -> Action | int:
        return self._callback("proxy_on_request_metadata", count)

    def response_headers(self, headers: Pairs, end_of_stream: bool = True) -> Action | int:
        return self._headers_callback(MapType.RESPONSE_HEADERS, "proxy_on_response_headers", list(headers),
                                      end_of_stream)

    def response_body(self, body: bytes | str, end_of_stream: bool = True) -> Action | int:
        return self._body_callback(BufferType.HTTP_RESPONSE_BODY, "proxy_on_response_body", _bytes(body),
                                   end_of_stream)

    def response_trailers(self, trailers: Pairs) -> Action | int:
        return self._trailers_callback(MapType.RESPONSE_TRAILERS, "proxy_on_response_trailers", list(trailers))

    def response_metadata(self, count: int = 0) -> Action | int:
        return self._callback("proxy_on_response_metadata", count)

    def finish(self) -> None:
        """End of stream as Envoy ends it: access log (proxy_on_log, with the request and response
        headers readable), then onDestroy (proxy_on_done, proxy_on_delete)."""
        if self.finished:
            return
        self.finished = True
        ctx = self.ctx
        ctx.maps.clear()
        ctx.buffers.clear()
        ctx.info.end_ns = self.host.clock.now_ns()
        ctx.log_maps = {k: HeaderMap(v.pairs, writable=False) for k, v in ctx.last_maps.items()
                        if k in (MapType.REQUEST_HEADERS, MapType.RESPONSE_HEADERS, MapType.RESPONSE_TRAILERS)}
        try:
            self.host._call(ctx, "proxy_on_log", ctx.id)
        finally:
            ctx.log_maps = None
        for name in ("proxy_on_done", "proxy_on_delete"):
            self.host._call(ctx, name, ctx.id)
        ctx.deleted = True
        self.host._contexts.pop(ctx.id, None)
        self.memory_after = self.host.memory_size

    # -- a whole exchange, Envoy style ----------------------------------------------------------

    def exchange(self, headers: Pairs, body: bytes, upstream: UpstreamAnswer | None,
                 trailers: Pairs | None = None) -> Observation:
        """Send a request through the filter, let ``upstream`` answer it, and finish the stream.

        Bodies arrive as Envoy's HTTP/1.1 codec delivers them: the data (end_of_stream false), then an
        empty chunk with end_of_stream true — a filter that wants the whole body returns
        StopIterationAndBuffer until then. A pause is waited out in virtual time (http call answers,
        ticks). The peer reads a body by its content-length, as a real client or upstream would. The
        result holds what the upstream received and what the client got; a trap ends the stream with
        ``error`` set (the VM is then marked failed)."""
        started = time.perf_counter()
        sent: HttpMessage | None = None
        response: HttpMessage | None = None
        error: str | None = None
        self.host._active = self.ctx
        try:
            passed = self._phase(MapType.REQUEST_HEADERS, BufferType.HTTP_REQUEST_BODY, StreamType.REQUEST, headers,
                                 body, trailers, "proxy_on_request_headers", "proxy_on_request_body",
                                 "proxy_on_request_trailers")
            local = self.ctx.local_response
            if self.ctx.closed:
                pass
            elif local is not None:
                response = self._local_reply(local)
            else:
                req_headers, req_body, _ = passed
                sent = _upstream_view(req_headers, _as_read(req_headers, req_body, "upstream"))
                self.ctx.info.upstream_called = True
                if upstream is not None:
                    response = self._respond(upstream)
            if not self.ctx.closed:
                self.finish()
        except StreamPaused as paused:
            error = str(paused)
            self._finish_quietly()
        except GuestFailure as failure:
            error = failure.describe()
        except PluginFailed as failed:
            error = str(failed) if failed.failure is None else failed.failure.describe()
        if self.ctx.closed:
            response = None
            self._finish_quietly()
        self.host._active = None
        return Observation(response=response, upstream_request=sent, logs=tuple(self.ctx.logs), error=error,
                           seconds=time.perf_counter() - started)

    def _finish_quietly(self) -> None:
        try:
            self.finish()
        except (GuestFailure, PluginFailed):
            pass

    def _wait(self, stream_type: int) -> bool:
        ctx = self.ctx
        return self.host.wait_for(lambda: ctx.continue_requested[stream_type] or ctx.local_reply_sent or ctx.closed)

    def _phase(self, map_type: int, buffer_type: int, stream_type: int, headers: Pairs, body: bytes,
               trailers: Pairs | None, on_headers: str, on_body: str, on_trailers: str) -> tuple[Pairs, bytes, Pairs]:
        """Headers, body and trailers callbacks of one direction; returns what passes on."""
        ctx = self.ctx
        ctx.continue_requested[stream_type] = False
        ctx.local_reply_sent = False
        has_body, has_trailers = bool(body), bool(trailers)
        action = self._headers_callback(map_type, on_headers, list(headers), not (has_body or has_trailers))
        hmap = ctx.last_maps[map_type]
        if self._stopped():
            return [], b"", []
        headers_passed = action == Action.CONTINUE or ctx.continue_requested[stream_type]
        if not headers_passed and (not (has_body or has_trailers) or action != Action.STOP_ITERATION):
            # nothing more to deliver (or StopAll: data waits) until the filter continues
            self._wait(stream_type)
            if self._stopped():
                return [], b"", []
            if not ctx.continue_requested[stream_type]:
                raise StreamPaused(_paused(on_headers, action, self.host))
        forwarded = bytearray()
        if has_body:
            chunks = [(body, False)] + ([] if has_trailers else [(b"", True)])
            for data, eos in chunks:
                ctx.continue_requested[stream_type] = False
                body_action, passed = self._body_step(buffer_type, on_body, data, eos)
                if self._stopped():
                    return [], b"", []
                if passed is not None:
                    forwarded += passed
                    continue
                if not eos:
                    continue  # StopIteration(AndBuffer): the data stays buffered, the next chunk is added
                self._wait(stream_type)
                if self._stopped():
                    return [], b"", []
                if not ctx.continue_requested[stream_type]:
                    raise StreamPaused(_paused(on_body, body_action, self.host))
                buf = ctx.buffers.pop(buffer_type, None) or ctx.released.pop(buffer_type, None)
                if buf is not None:
                    forwarded += buf.data
            self._last_body[buffer_type] = bytes(forwarded)
        trailer_type = map_type + 1
        if has_trailers:
            buf = ctx.buffers.pop(buffer_type, None)  # data a body callback kept buffered goes with the trailers
            if buf is not None:
                forwarded += buf.data
            ctx.continue_requested[stream_type] = False
            t_action = self._trailers_callback(trailer_type, on_trailers, list(trailers))
            if self._stopped():
                return [], b"", []
            if t_action != Action.CONTINUE and not ctx.continue_requested[stream_type]:
                self._wait(stream_type)
                if not ctx.continue_requested[stream_type] and not self._stopped():
                    raise StreamPaused(_paused(on_trailers, t_action, self.host))
        passed_trailers = ctx.last_maps[trailer_type].copy() if trailer_type in ctx.last_maps else []
        ctx.maps.pop(map_type, None)
        if buffer_type == BufferType.HTTP_RESPONSE_BODY:
            ctx.info.bytes_sent = len(forwarded)
        return hmap.copy(), bytes(forwarded), passed_trailers

    def _body_step(self, kind: int, name: str, data: bytes, end_of_stream: bool) -> tuple[Action | int, bytes | None]:
        """One body callback; returns the action and the bytes that passed on (None: none, still held)."""
        ctx = self.ctx
        action = self._body_callback(kind, name, data, end_of_stream)
        if action == Action.CONTINUE:
            return action, self._last_body.get(kind, b"")
        if ctx.continue_requested[StreamType.REQUEST if kind == BufferType.HTTP_REQUEST_BODY else StreamType.RESPONSE]:
            buf = ctx.buffers.pop(kind, None) or ctx.released.pop(kind, None)
            return action, bytes(buf.data) if buf is not None else b""
        if action == 3:  # StopIterationNoBuffer: Envoy keeps nothing; the filter owns the data
            ctx.buffers.pop(kind, None)
        return action, None

    def _stopped(self) -> bool:
        return self.ctx.local_reply_sent or self.ctx.closed

    def _respond(self, upstream: UpstreamAnswer) -> HttpMessage:
        headers = [(":status", str(upstream.status))] + [(k.lower(), v) for k, v in upstream.headers]
        if upstream.body and not any(k == "content-length" for k, _ in headers):
            headers.append(("content-length", str(len(upstream.body))))
        out_headers, out_body, _ = self._phase(MapType.RESPONSE_HEADERS, BufferType.HTTP_RESPONSE_BODY,
                                               StreamType.RESPONSE, headers, upstream.body, None,
                                               "proxy_on_response_headers", "proxy_on_response_body",
                                               "proxy_on_response_trailers")
        if self.ctx.local_reply_sent:  # a local reply from the response path replaces the upstream's response
            return self._local_reply(self.ctx.local_response)
        return _response(out_headers, _as_read(out_headers, out_body, "client"))

    def _local_reply(self, local: LocalResponse) -> HttpMessage:
        """Envoy sends a local reply through the encoder path: the filter sees it in on_response_*."""
        info = self.ctx.info
        info.response_code = local.status
        info.response_code_details = local.details
        self.ctx.last_maps.pop(MapType.RESPONSE_HEADERS, None)
        headers = local_reply_headers(local)
        out_headers, out_body, _ = self._phase(MapType.RESPONSE_HEADERS, BufferType.HTTP_RESPONSE_BODY,
                                               StreamType.RESPONSE, headers, local.body, None,
                                               "proxy_on_response_headers", "proxy_on_response_body",
                                               "proxy_on_response_trailers")
        return _response(out_headers, _as_read(out_headers, out_body, "client"))


def _as_read(headers: Pairs, body: bytes, peer: str) -> bytes:
    """The body as the peer reads it off an HTTP/1.1 connection: by content-length when there is one
    (bytes beyond it are not part of the message; a filter that grows a body must fix or drop the
    header), otherwise (chunked) all of it."""
    length = next((v for k, v in headers if k == "content-length"), None)
    if length is None:
        return body
    try:
        n = int(length)
    except ValueError:
        return body
    if len(body) < n:
        raise StreamPaused(f"the body is {len(body)} bytes but content-length says {n}: the {peer} would wait "
                           "for the rest (a filter that changes a body must update or remove content-length)")
    return body[:n]


class TcpConnection:
    """One TCP connection through the filter as a network filter (like proxytest's connection API).

    ``downstream_data`` (client → upstream, proxy_on_downstream_data) and ``upstream_data`` (upstream →
    client, proxy_on_upstream_data) return the filter's status; data passes on when it returns Continue
    (or calls proxy_continue_stream(Downstream)), otherwise it stays buffered and the next chunk is
    added to it, as in Envoy. ``to_upstream`` / ``to_downstream`` hold what passed. Closing:
    ``close_downstream``, ``close_upstream``; when both sides are closed Envoy calls proxy_on_done,
    proxy_on_log, proxy_on_delete (in that order for TCP)."""

    def __init__(self, host: PluginHost, ctx: TcpContext):
        self.host = host
        self.ctx = ctx
        self.new_connection_action: Action | int = Action.CONTINUE
        self.to_upstream = bytearray()
        self.to_downstream = bytearray()
        self.finished = False

    @property
    def id(self) -> int:
        return self.ctx.id

    @property
    def logs(self) -> list[LogRecord]:
        return self.ctx.logs

    @property
    def closed_by_filter(self) -> list[StreamType]:
        """Which sides the filter closed with proxy_close_stream (Downstream/Upstream)."""
        return [StreamType(t) for t in self.ctx.close_requested]

    def _data(self, kind: int, name: str, data: bytes, end_of_stream: bool, out: bytearray) -> Action | int:
        ctx = self.ctx
        buf = ctx.buffers.get(kind)
        if buf is None:
            buf = ctx.buffers[kind] = Buffer()
        buf.data += data
        if kind == BufferType.DOWNSTREAM_DATA:
            ctx.info.bytes_received += len(data)
            ctx.continue_requested[StreamType.DOWNSTREAM] = False
        else:
            ctx.info.bytes_sent += len(data)
        result = Action.of(self.host._call(ctx, name, ctx.id, len(buf.data), int(end_of_stream)))
        if result == Action.CONTINUE or (kind == BufferType.DOWNSTREAM_DATA
                                         and ctx.continue_requested[StreamType.DOWNSTREAM]):
            out += buf.data
            ctx.buffers.pop(kind, None)
        if StreamType.DOWNSTREAM in ctx.close_requested and not ctx.downstream_closed:
            self.close_downstream(PeerType.LOCAL)  # Envoy closes the connection: a local close event
        return result

    def downstream_data(self, data: bytes | str, end_of_stream: bool = False) -> Action | int:
        return self._data(BufferType.DOWNSTREAM_DATA, "proxy_on_downstream_data", _bytes(data), end_of_stream,
                          self.to_upstream)

    def upstream_data(self, data: bytes | str, end_of_stream: bool = False) -> Action | int:
        result = self._data(BufferType.UPSTREAM_DATA, "proxy_on_upstream_data", _bytes(data), end_of_stream,
                            self.to_downstream)
        if end_of_stream:  # Envoy's onWrite: end_stream counts as the upstream closing
            self.close_upstream(PeerType.UNKNOWN)
        return result

    def resume_downstream(self) -> bool:
        """What Envoy does once the filter called proxy_continue_stream(Downstream) (e.g. from an http
        call answer): buffered downstream data passes upstream. Returns whether it did."""
        if not self.ctx.continue_requested[StreamType.DOWNSTREAM]:
            return False
        buf = self.ctx.buffers.pop(BufferType.DOWNSTREAM_DATA, None)
        if buf is not None:
            self.to_upstream += buf.data
        return True

    def close_downstream(self, peer: PeerType = PeerType.REMOTE) -> None:
        """The client side closed: proxy_on_downstream_connection_close, then (as Envoy does on any
        downstream close) the context ends: proxy_on_done, proxy_on_log, proxy_on_delete."""
        if self.ctx.downstream_closed or self.finished:
            return
        self.ctx.downstream_closed = True
        self.host._call(self.ctx, "proxy_on_downstream_connection_close", self.ctx.id, int(peer))
        self._close_tcp()

    def close_upstream(self, peer: PeerType = PeerType.REMOTE) -> None:
        """The upstream side closed: proxy_on_upstream_connection_close (the context ends when the
        downstream is closed too)."""
        if self.ctx.upstream_closed or self.finished:
            return
        self.ctx.upstream_closed = True
        self.host._call(self.ctx, "proxy_on_upstream_connection_close", self.ctx.id, int(peer))
        if self.ctx.downstream_closed:
            self._close_tcp()

    def _close_tcp(self) -> None:
        if self.finished:
            return
        self.finished = True
        ctx = self.ctx
        ctx.info.end_ns = self.host.clock.now_ns()
        for name in ("proxy_on_done", "proxy_on_log", "proxy_on_delete"):
            self.host._call(ctx, name, ctx.id)
        ctx.deleted = True
        self.host._contexts.pop(ctx.id, None)


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


def _chunked(headers: Pairs, body: bytes) -> Pairs:
    """Envoy sends a body without content-length chunked (HTTP/1.1)."""
    names = {k for k, _ in headers}
    if body and "content-length" not in names and "transfer-encoding" not in names:
        return list(headers) + [("transfer-encoding", "chunked")]
    return list(headers)


def _upstream_view(headers: Pairs, body: bytes) -> HttpMessage:
    headers = _chunked(headers, body)
    pseudo = dict((k, v) for k, v in headers if k.startswith(":"))
    rest = [(k, v) for k, v in headers if not k.startswith(":") and k != "host"]
    host = pseudo.get(":authority")
    out = ([("host", host)] if host is not None else []) + rest
    return HttpMessage(headers=tuple(out), body=body, method=pseudo.get(":method", ""), path=pseudo.get(":path", ""))


def _response(headers: Pairs, body: bytes) -> HttpMessage:
    headers = _chunked(headers, body)
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
        text += (f"; http calls still unanswered: {calls} (give the host an answer for that cluster: "
                 "http_calls in the spec, or PluginHost(http_answers=…/http_upstreams=…))")
    return text


def _cluster_name(service: bytes) -> str | None:
    """A gRPC service given as a plain cluster name (rather than a serialized GrpcService)."""
    try:
        name = service.decode("ascii")
    except UnicodeDecodeError:
        return None
    return name if name and name.isprintable() else None


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _show(config: bytes) -> str:
    if not config:
        return "(empty)"
    shown = config[:80].decode("utf-8", "replace")
    return repr(shown + ("…" if len(config) > 80 else ""))

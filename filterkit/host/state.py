"""Host-side state the ABI functions read and change: contexts, header maps, buffers, shared data,
metrics, outbound calls, the virtual clock."""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable

from ..verdict import LogRecord


class WasmResult(IntEnum):
    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2
    SERIALIZATION_FAILURE = 3
    PARSE_FAILURE = 4
    BAD_EXPRESSION = 5
    INVALID_MEMORY_ACCESS = 6
    EMPTY = 7
    CAS_MISMATCH = 8
    RESULT_MISMATCH = 9
    INTERNAL_FAILURE = 10
    BROKEN_CONNECTION = 11
    UNIMPLEMENTED = 12


class MapType(IntEnum):
    REQUEST_HEADERS = 0
    REQUEST_TRAILERS = 1
    RESPONSE_HEADERS = 2
    RESPONSE_TRAILERS = 3
    GRPC_RECEIVE_INITIAL_METADATA = 4
    GRPC_RECEIVE_TRAILING_METADATA = 5
    HTTP_CALL_RESPONSE_HEADERS = 6
    HTTP_CALL_RESPONSE_TRAILERS = 7


class BufferType(IntEnum):
    HTTP_REQUEST_BODY = 0
    HTTP_RESPONSE_BODY = 1
    DOWNSTREAM_DATA = 2
    UPSTREAM_DATA = 3
    HTTP_CALL_RESPONSE_BODY = 4
    GRPC_RECEIVE_BUFFER = 5
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7
    CALL_DATA = 8


class StreamType(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    DOWNSTREAM = 2
    UPSTREAM = 3


class PeerType(IntEnum):
    UNKNOWN = 0
    LOCAL = 1
    REMOTE = 2


class MetricType(IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class Action(IntEnum):
    """FilterHeadersStatus / FilterDataStatus / FilterTrailersStatus / network FilterStatus values."""

    CONTINUE = 0
    STOP_ITERATION = 1  # headers: StopIteration; body: StopIterationAndBuffer
    STOP_ALL_ITERATION_AND_BUFFER = 3  # headers only (body: StopIterationAndWatermark = 2)
    STOP_ALL_ITERATION_AND_WATERMARK = 4

    @classmethod
    def of(cls, value: int | None) -> "Action | int":
        if value is None:
            return cls.CONTINUE
        try:
            return cls(value)
        except ValueError:
            return value


LOG_LEVEL_NAMES = ("trace", "debug", "info", "warn", "error", "critical")
WASI_STDOUT_LEVEL = 2  # Envoy logs WASI stdout at info
WASI_STDERR_LEVEL = 4  # and stderr at error
GRPC_UNIMPLEMENTED = 12

Pairs = list[tuple[str, str]]


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def raw(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def serialize_pairs(pairs) -> bytes:
    """Envoy's wire form: u32 count, (u32 key len, u32 value len) per pair, then key\\0value\\0 per pair.
    Keys and values may be ``str`` or ``bytes``."""
    encoded = [(k if isinstance(k, bytes) else raw(k), v if isinstance(v, bytes) else raw(v)) for k, v in pairs]
    out = [struct.pack("<I", len(encoded))]
    out += [struct.pack("<II", len(k), len(v)) for k, v in encoded]
    for k, v in encoded:
        out += [k, b"\0", v, b"\0"]
    return b"".join(out)


def parse_pairs(data: bytes) -> Pairs:
    """The inverse of ``serialize_pairs``; tolerant like Envoy's PairsUtil (stops at the first overrun)."""
    if len(data) < 4:
        return []
    (count,) = struct.unpack_from("<I", data, 0)
    pos = 4
    sizes = []
    for _ in range(count):
        if pos + 8 > len(data):
            return []
        sizes.append(struct.unpack_from("<II", data, pos))
        pos += 8
    pairs = []
    for key_len, value_len in sizes:
        if pos + key_len + 1 + value_len + 1 > len(data):
            return []
        key = data[pos:pos + key_len]
        pos += key_len + 1
        value = data[pos:pos + value_len]
        pos += value_len + 1
        pairs.append((text(key), text(value)))
    return pairs


class HeaderMap:
    """An ordered multi-map with Envoy's semantics (lower-case keys, first value wins on get)."""

    __slots__ = ("pairs", "writable")

    def __init__(self, pairs=(), writable: bool = True):
        self.pairs: Pairs = [(k.lower(), v) for k, v in pairs]
        self.writable = writable

    def get(self, key: str) -> str | None:
        key = key.lower()
        for k, v in self.pairs:
            if k == key:
                return v
        return None

    def get_all(self, key: str) -> list[str]:
        key = key.lower()
        return [v for k, v in self.pairs if k == key]

    def add(self, key: str, value: str) -> None:
        key = key.lower()
        if key.startswith(":"):  # pseudo headers stay in front, as in Envoy's header map
            index = sum(1 for k, _ in self.pairs if k.startswith(":"))
            self.pairs.insert(index, (key, value))
        else:
            self.pairs.append((key, value))

    def replace(self, key: str, value: str) -> None:
        """Envoy's setCopy: remove every value, then add (so the header moves to the end)."""
        self.remove(key)
        self.add(key, value)

    def remove(self, key: str) -> None:
        key = key.lower()
        self.pairs = [(k, v) for k, v in self.pairs if k != key]

    def set_all(self, pairs: Pairs) -> None:
        self.pairs = []
        for k, v in pairs:
            self.add(k, v)

    def byte_size(self) -> int:
        return sum(len(raw(k)) + len(raw(v)) for k, v in self.pairs)

    def copy(self) -> Pairs:
        return list(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"HeaderMap({self.pairs!r})"


class Buffer:
    __slots__ = ("data", "writable")

    def __init__(self, data: bytes = b"", writable: bool = True):
        self.data = bytearray(data)
        self.writable = writable

    def set_bytes(self, start: int, length: int, data: bytes) -> WasmResult:
        """Envoy's Buffer::copyFrom: prepend, replace all, or append; nothing in between."""
        if not self.writable:
            return WasmResult.BAD_ARGUMENT
        size = len(self.data)
        if start == 0:
            if length == 0:
                self.data[0:0] = data
                return WasmResult.OK
            if length >= size:
                self.data[:] = data
                return WasmResult.OK
            return WasmResult.BAD_ARGUMENT
        if start >= size:
            self.data += data
            return WasmResult.OK
        return WasmResult.BAD_ARGUMENT


# -- outbound calls -------------------------------------------------------------------------------


@dataclass
class HttpCallAnswer:
    """What an http call's upstream answers (scripted): delivered through proxy_on_http_call_response.

    ``delay_ms``: virtual time until the answer arrives (0: right after the callback that made the call
    returns). ``reset``: the call fails without any answer, Envoy's failure callback (proxy_get_status then
    gives 11 "reset", and the callback gets 0 headers, 0 body bytes, 0 trailers). A failed *connection*
    is not that in Envoy: its async client answers with a local reply (``CONNECTION_TERMINATED``)."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    trailers: tuple[tuple[str, str], ...] = ()
    delay_ms: int = 0
    reset: bool = False

    def header_pairs(self) -> Pairs:
        pairs = [(":status", str(self.status))] + [(k.lower(), v) for k, v in self.headers]
        if self.body and not any(k == "content-length" for k, _ in pairs):
            pairs.append(("content-length", str(len(self.body))))
        return pairs


# Envoy's async client answers a request whose timeout elapsed with this local reply.
TIMEOUT_ANSWER = HttpCallAnswer(504, (("content-type", "text/plain"),), b"upstream request timeout")
# … and a request whose upstream connection closed before a response with this one (seen on Envoy 1.40:
# a spec's ``http_calls: {cluster: {reset: true}}`` on both targets) …
CONNECTION_TERMINATED = HttpCallAnswer(503, (("content-type", "text/plain"),),
                                       b"upstream connect error or disconnect/reset before headers. "
                                       b"reset reason: connection termination")
# … and one whose connection could not be made (refused, unreachable) with this one.
CONNECTION_FAILED = HttpCallAnswer(503, (("content-type", "text/plain"),),
                                   b"upstream connect error or disconnect/reset before headers. "
                                   b"reset reason: remote connection failure")


@dataclass
class HttpCall:
    """An http call the filter dispatched (proxy_http_call)."""

    token: int
    context_id: int  # the root context that receives proxy_on_http_call_response
    upstream: str  # the cluster name
    headers: Pairs
    body: bytes
    trailers: Pairs
    timeout_ms: int
    dispatched_ns: int = 0
    answer: HttpCallAnswer | None = None  # what it got, once answered
    due_ns: int | None = None  # when a scheduled answer arrives (virtual clock)
    scheduled: HttpCallAnswer | None = None

    @property
    def method(self) -> str:
        return next((v for k, v in self.headers if k.lower() == ":method"), "")

    @property
    def path(self) -> str:
        return next((v for k, v in self.headers if k.lower() == ":path"), "")

    @property
    def authority(self) -> str:
        return next((v for k, v in self.headers if k.lower() == ":authority"), "")

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class GrpcCall:
    """A gRPC call or stream the filter started; the host closes each with UNIMPLEMENTED (12)."""

    token: int
    context_id: int
    service: bytes  # serialized GrpcService (or a cluster name)
    service_name: str
    method: str
    initial_metadata: Pairs
    message: bytes = b""  # the request (calls) or the last message sent (streams)
    stream: bool = False
    timeout_ms: int = 0
    messages: list[bytes] = field(default_factory=list)
    closed: bool = False


@dataclass
class LocalResponse:
    status: int
    details: str
    body: bytes
    headers: Pairs
    grpc_status: int


class VirtualClock:
    """The time the filter sees (proxy_get_current_time_nanoseconds, WASI clocks, request.time …).

    It stands still until the test moves it (``PluginHost.advance_time``), so results do not depend
    on how fast the machine is. ``real=True`` follows the wall clock instead."""

    def __init__(self, start_ns: int | None = None, *, real: bool = False,
                 source: Callable[[], int] | None = None):
        self.real = real or source is not None
        self._source = source or time.time_ns
        self._now = start_ns if start_ns is not None else time.time_ns()
        self._monotonic_base = time.monotonic_ns()
        self._start = self._now

    def now_ns(self) -> int:
        return self._source() if self.real else self._now

    def monotonic_ns(self) -> int:
        if self.real:
            return time.monotonic_ns()
        return self._monotonic_base + (self._now - self._start)

    def set(self, now_ns: int) -> None:
        if not self.real:
            self._now = now_ns


# -- contexts -----------------------------------------------------------------------------------


class Context:
    """A context as the VM knows it: the VM context (id 0), a root context, an HTTP stream or a
    TCP connection."""

    kind = "vm"

    def __init__(self, context_id: int, root: "RootContext | None"):
        self.id = context_id
        self.root = root
        self.logs: list[LogRecord] = []
        self.filter_state: dict[str, bytes] = {}  # proxy_set_property values ("wasm.<path>" in Envoy)
        self.properties: dict[tuple[str, ...], Any] = {}  # per-context property overrides set by the test
        self.created = False
        self.deleted = False

    @property
    def root_context(self) -> "RootContext | None":
        return self.root if self.root is not None else (self if isinstance(self, RootContext) else None)

    def header_map(self, kind: int, write: bool = False) -> HeaderMap | None:
        root = self.root_context
        if root is not None and kind in (MapType.HTTP_CALL_RESPONSE_HEADERS, MapType.HTTP_CALL_RESPONSE_TRAILERS,
                                         MapType.GRPC_RECEIVE_INITIAL_METADATA,
                                         MapType.GRPC_RECEIVE_TRAILING_METADATA):
            return None if write else root.received_maps.get(kind)
        return None

    def buffer(self, kind: int) -> Buffer | None:
        root = self.root_context
        if root is None:
            return None
        if kind == BufferType.VM_CONFIGURATION:
            return Buffer(root.vm_config, writable=False)
        if kind == BufferType.PLUGIN_CONFIGURATION and root.configuring:
            return Buffer(root.plugin_config, writable=False)
        if kind == BufferType.HTTP_CALL_RESPONSE_BODY and root.http_call_body is not None:
            return root.http_call_body
        if kind == BufferType.GRPC_RECEIVE_BUFFER:
            return root.grpc_receive_buffer or Buffer(b"", writable=False)
        if kind == BufferType.CALL_DATA and root.call_data is not None:
            return root.call_data
        return None


class RootContext(Context):
    """The plugin: one per (VM, plugin configuration)."""

    kind = "root"

    def __init__(self, context_id: int, name: str, plugin_config: bytes, vm_config: bytes):
        super().__init__(context_id, None)
        self.name = name
        self.plugin_config = plugin_config
        self.vm_config = vm_config
        self.configuring = False  # plugin configuration is readable only inside on_configure / validate
        self.tick_period_ms = 0
        self.next_tick_ns: int | None = None
        self.done_called = False
        self.received_maps: dict[int, HeaderMap] = {}  # http call response / gRPC metadata during a callback
        self.http_call_body: Buffer | None = None
        self.grpc_receive_buffer: Buffer | None = None
        self.call_data: Buffer | None = None


@dataclass
class StreamInfo:
    """What Envoy's StreamInfo knows about one stream (the source of many properties)."""

    start_ns: int = 0
    end_ns: int | None = None  # set when the request completed (on_log)
    connection_id: int = 0
    source_port: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    response_code: int | None = None
    response_code_details: str | None = None
    response_flags: int = 0
    upstream_called: bool = False


class StreamContext(Context):
    """One HTTP stream (request + response) as a filter instance sees it.

    ``maps``/``buffers`` hold what is *available* right now, as in Envoy: a header map is gone once its
    callback returned Continue (or the filter called proxy_continue_stream), a body buffer likewise.
    During proxy_on_log the request/response headers and response trailers are readable, not writable."""

    kind = "http"

    def __init__(self, context_id: int, root: RootContext):
        super().__init__(context_id, root)
        self.maps: dict[int, HeaderMap] = {}
        self.buffers: dict[int, Buffer] = {}
        self.released: dict[int, Buffer] = {}  # a body the filter let go (proxy_continue_stream) while paused
        self.log_maps: dict[int, HeaderMap] | None = None  # access-log phase (proxy_on_log)
        self.last_maps: dict[int, HeaderMap] = {}  # every map as it was last seen (for properties)
        self.local_response: LocalResponse | None = None
        self.local_reply_sent = False  # set by proxy_send_local_response during the current callback
        self.continue_requested = {0: False, 1: False}
        self.closed = False
        self.route_cache_cleared = 0
        self.end_of_stream = False
        self.info = StreamInfo()

    def header_map(self, kind: int, write: bool = False) -> HeaderMap | None:
        if kind >= MapType.GRPC_RECEIVE_INITIAL_METADATA:
            return super().header_map(kind, write)
        if self.log_maps is not None:
            return None if write else self.log_maps.get(kind)
        hmap = self.maps.get(kind)
        if hmap is None and kind in (MapType.REQUEST_TRAILERS, MapType.RESPONSE_TRAILERS) and self.end_of_stream:
            # Envoy adds a trailer map on demand when a body callback with end_of_stream asks for one
            body = BufferType.HTTP_REQUEST_BODY if kind == MapType.REQUEST_TRAILERS else BufferType.HTTP_RESPONSE_BODY
            if body in self.buffers:
                hmap = self.maps[kind] = HeaderMap()
                self.last_maps[kind] = hmap
        return hmap

    def buffer(self, kind: int) -> Buffer | None:
        if kind in (BufferType.HTTP_REQUEST_BODY, BufferType.HTTP_RESPONSE_BODY):
            return self.buffers.get(kind)
        if kind in (BufferType.DOWNSTREAM_DATA, BufferType.UPSTREAM_DATA):
            return None
        return super().buffer(kind)


class TcpContext(Context):
    """One TCP connection through a network filter."""

    kind = "tcp"

    def __init__(self, context_id: int, root: RootContext):
        super().__init__(context_id, root)
        self.buffers: dict[int, Buffer] = {}
        self.info = StreamInfo()
        self.continue_requested = {2: False, 3: False}
        self.close_requested: list[int] = []  # stream types the filter closed (2 downstream, 3 upstream)
        self.downstream_closed = False
        self.upstream_closed = False

    def header_map(self, kind: int, write: bool = False) -> HeaderMap | None:
        if kind >= MapType.GRPC_RECEIVE_INITIAL_METADATA:
            return super().header_map(kind, write)
        return None

    def buffer(self, kind: int) -> Buffer | None:
        if kind in (BufferType.DOWNSTREAM_DATA, BufferType.UPSTREAM_DATA):
            return self.buffers.get(kind)
        if kind in (BufferType.HTTP_REQUEST_BODY, BufferType.HTTP_RESPONSE_BODY):
            return None
        return super().buffer(kind)


# -- what outlives a VM -------------------------------------------------------------------------


@dataclass
class Metric:
    kind: int  # 0 counter, 1 gauge, 2 histogram
    name: str
    value: int = 0
    samples: list[int] = field(default_factory=list)


class SharedState:
    """What Envoy keeps per process rather than per VM: shared data, queues, metrics. They outlive VM
    restarts; hand one ``SharedState`` to several ``PluginHost`` objects to share it between plugins
    (keys are scoped by VM id, as in Envoy)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], tuple[bytes, int]] = {}  # (vm_id, key) -> (value, cas)
        self.next_cas = 1
        self.queues: dict[int, tuple[str, str, list[bytes]]] = {}  # token -> (vm_id, name, items)
        self.queue_tokens: dict[tuple[str, str], int] = {}
        self.queue_owner: dict[int, tuple[Any, int]] = {}  # token -> (host, root context id to notify)
        self.metrics: dict[tuple[int, str], Metric] = {}  # (kind, name) -> metric (Envoy's stats store)

    def cas(self) -> int:
        value = self.next_cas
        self.next_cas = value + 1 if value < 0xFFFFFFFF else 1
        return value

    def metric(self, kind: int, name: str) -> Metric:
        metric = self.metrics.get((kind, name))
        if metric is None:
            metric = self.metrics[(kind, name)] = Metric(kind, name)
        return metric

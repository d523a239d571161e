"""Scripted HTTP servers behind Envoy, on 127.0.0.1:

- ``UpstreamServer``: the test upstream; answers each case's request with the case's ``UpstreamAnswer``
  and records the request as it arrived (the "upstream view" of a case);
- ``CallServer``: one per cluster a spec's ``http_calls`` name; answers the filter's http calls to that
  cluster with the current case's replies, in call order (a delay, or a reset connection).
"""

from __future__ import annotations

import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..spec import CASE_HEADER, HttpCallReply, UpstreamAnswer
from ..verdict import HttpMessage

_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")


class _ScriptedServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (free port) whose subclass picks each answer
    (``_answer``). ``current``: the case the runner is sending right now."""

    thread_name = "filterkit-scripted"

    def __init__(self) -> None:
        self.current: str | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the upstream server is not running"
        return self._server.server_address[1]

    def __enter__(self):
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()  # ends scripted delays
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # Envoy keeps pooled connections open: end them so handler threads exit
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()  # joins the handler threads (block_on_close)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _answer(self, message: HttpMessage) -> UpstreamAnswer | HttpCallReply | None:
        """The answer to ``message`` (None: close the connection without one); also records it."""
        raise NotImplementedError

    def pause(self, seconds: float) -> None:
        self._closing.wait(seconds)


class UpstreamServer(_ScriptedServer):
    """``with UpstreamServer({"1": UpstreamAnswer(...)}) as up: up.port … up.received["1"]``.

    Requests are matched to a case by their ``x-filterkit-case`` header; when a filter removed or
    changed it, by ``current`` (the case the runner is sending right now).
    """

    thread_name = "filterkit-upstream"

    def __init__(self, answers: dict[str, UpstreamAnswer]):
        super().__init__()
        self.answers = dict(answers)
        self.received: dict[str, HttpMessage] = {}
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self.calls.clear()

    def _answer(self, message: HttpMessage) -> UpstreamAnswer:
        tag = message.header(CASE_HEADER)
        key = tag if tag in self.answers else self.current
        self._record(key, message)
        return self.answers.get(key, UpstreamAnswer(status=404, body=b"filterkit: no case for this request"))

    def _record(self, key: str | None, message: HttpMessage) -> None:
        if key is None:
            return
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            self.received.setdefault(key, message)  # the first request a case caused


class CallServer(_ScriptedServer):
    """The cluster ``cluster`` of a spec's ``http_calls``: the n-th call during case ``current`` gets
    that case's n-th reply (the last one repeats). A case without replies for this cluster gets
    none: the call stays unanswered until the filter's own timeout, as on the in-process host."""

    thread_name = "filterkit-http-calls"

    def __init__(self, cluster: str, replies: dict[str, tuple[HttpCallReply, ...]]):
        super().__init__()
        self.cluster = cluster
        self.replies = dict(replies)
        self.received: dict[str, list[HttpMessage]] = {}

    def _answer(self, message: HttpMessage) -> HttpCallReply | None:
        key = self.current
        with self._lock:
            calls = self.received.setdefault(key or "", [])
            calls.append(message)
            index = len(calls) - 1
        replies = self.replies.get(key or "")
        if not replies:
            self.pause(UNANSWERED_SECONDS)
            return None
        reply = replies[min(index, len(replies) - 1)]
        if reply.delay_ms:
            self.pause(reply.delay_ms / 1000)
        return None if reply.reset else reply


# How long an unscripted call is held open: longer than any sensible http-call timeout of a filter.
UNANSWERED_SECONDS = 120.0


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = False


def _handler_for(upstream: UpstreamServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 60

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes: without this, Nagle + delayed ACK add 40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with upstream._lock:
                upstream._connections.add(self.connection)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                with upstream._lock:
                    upstream._connections.discard(self.connection)

        def log_message(self, format: str, *args) -> None:  # no access log on stderr
            pass

        def _serve(self) -> None:
            headers = tuple((name.lower(), value) for name, value in self.headers.items())
            body = self._read_body()
            answer = upstream._answer(HttpMessage(headers=headers, body=body, method=self.command, path=self.path))
            if answer is None:  # a failed connection: no answer at all
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            self.send_response_only(answer.status)
            names = {name.lower() for name, _ in answer.headers}
            for name, value in answer.headers:
                self.send_header(name, value)
            payload = b"" if self.command == "HEAD" or answer.status in (204, 304) or answer.status < 200 else answer.body
            if "content-length" not in names and "transfer-encoding" not in names and answer.status not in (204, 304):
                self.send_header("content-length", str(len(answer.body)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)
            self.wfile.flush()

        def _read_body(self) -> bytes:
            if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length > 0 else b""

    for method in _METHODS:
        setattr(Handler, f"do_{method}", Handler._serve)
    return Handler

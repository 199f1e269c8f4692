"""The HTTP server: the offline model on a loopback port, and the process-wide instance the samples share."""

from __future__ import annotations

import json
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import chat_completions
from .conversation import Reply
from .protocol import Answer, RequestRejected, error_body
from .responses import ResponsesEndpoint


@dataclass(frozen=True)
class Exchange:
    """One answered request, as told to the server's observers."""

    path: str  # e.g. "/v1/chat/completions"
    status: int
    request: dict[str, Any] | None  # the parsed JSON body, if it was a JSON object
    reply: Reply | None  # what the model answered (None for errors)
    error: str | None = None  # the error message sent with a 4xx/5xx status


Observer = Callable[[Exchange], None]


class OfflineModelServer:
    """The offline model on a loopback HTTP port, speaking the OpenAI Chat Completions and Responses APIs.

    `observers` are called with an `Exchange` for every answered request, in the handler thread, before the
    answer is sent (so a client holding the answer can rely on its observers having seen it).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._responses = ResponsesEndpoint()
        self.observers: list[Observer] = []

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("The offline model server is not running; call start() first.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> str:
        """Serve in a daemon thread; returns the base URL, e.g. "http://127.0.0.1:PORT/v1"."""
        with self._lock:
            if self._httpd is None:
                httpd = _QuietHTTPServer((self._host, self._port), _handler_for(self))
                self._thread = threading.Thread(
                    target=httpd.serve_forever, args=(0.05,), name="offline-model", daemon=True
                )
                self._httpd = httpd
                self._thread.start()
        return self.base_url

    def stop(self) -> None:
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def answer(self, method: str, path: str, raw_body: bytes) -> Answer:
        """Handle one request (called by the HTTP handler threads) and tell the observers about it."""
        route = path.split("?", 1)[0].rstrip("/")
        body: dict[str, Any] | None = None
        reply: Reply | None = None
        try:
            if method != "POST" or route not in ("/v1/chat/completions", "/v1/responses"):
                message = (
                    f"Unknown request URL: {method} {path}. The offline model serves POST /v1/chat/completions "
                    "and POST /v1/responses."
                )
                answer = Answer(404, error_body(message, "invalid_request_error", code="unknown_url"))
            else:
                body = _json_object(raw_body)
                endpoint = chat_completions.answer if route == "/v1/chat/completions" else self._responses.answer
                answer, reply = endpoint(body)
        except RequestRejected as rejection:
            rejected = error_body(rejection.message, "invalid_request_error", rejection.param, rejection.code)
            answer = Answer(400, rejected)
        except Exception:  # a bug in the model: fail loudly, as a 500 the SDK reports
            traceback.print_exc()
            message = "The offline model failed: " + traceback.format_exc(limit=1).strip().splitlines()[-1]
            answer = Answer(500, error_body(message, "server_error"))
        error = answer.body["error"]["message"] if answer.status >= 400 and answer.body else None
        exchange = Exchange(route, answer.status, body, reply, error)
        for observer in tuple(self.observers):
            observer(exchange)
        return answer


def _json_object(raw_body: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw_body or b"null")
    except ValueError as error:
        raise RequestRejected(f"We could not parse the JSON body of your request ({error}).") from error
    if not isinstance(body, dict):
        raise RequestRejected("The request body must be a JSON object.")
    return body


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not delay stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-stream is normal; anything else is a bug worth printing."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(server: OfflineModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes; don't wait for ACKs

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: no request log on stderr."""

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            answer = server.answer(method, self.path, raw_body)
            if answer.events is None:
                self._send_json(answer.status, answer.body or {})
            else:
                self._send_events(answer.events)

        def _send_json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_events(self, events: list[tuple[str | None, str]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")  # the stream ends when the connection does
            self.end_headers()
            self.close_connection = True
            for name, data in events:
                prefix = f"event: {name}\n" if name else ""
                self.wfile.write(f"{prefix}data: {data}\n\n".encode())
                self.wfile.flush()

    return Handler


_singleton: OfflineModelServer | None = None
_singleton_lock = threading.Lock()


def offline_model_server() -> OfflineModelServer:
    """The process-wide offline model server, started on a free loopback port on first use."""
    global _singleton
    with _singleton_lock:
        if _singleton is None:
            server = OfflineModelServer()
            server.start()
            _singleton = server
        return _singleton

"""The one small HTTP endpoint behind the guard's liveness and doctor's health/metrics.

A *route* maps a request path to ``(status, body, content type)``. Everything
else is decided here once: a per-connection timeout (a probe that connects and
never sends must not pin a thread), no request log (a probe every few seconds
would flood the worker's or doctor's output), IPv6 hosts, port reuse set on a
subclass (never on the stdlib class, which would change every other user of
it in the process), and a bounded ``close()``.

    >>> server = EndpointServer(lambda path: (200, b"ok", "text/plain"), "127.0.0.1", 0, name="t")
    >>> server.port > 0
    True
    >>> server.close()
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: ``route(path) -> (status, body, content type)``; ``path`` has no query string.
Route = Callable[[str], tuple[int, bytes, str]]

#: What a route returns for a path it does not serve.
NOT_FOUND: tuple[int, bytes, str] = (404, b'{"error": "not found"}', "application/json")

#: Seconds a client may take to send its request.
CLIENT_TIMEOUT = 5


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _server_class(host: str) -> type[_Server]:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return _Server6
    return _Server


class EndpointServer:
    """Serve ``route`` on ``host:port`` (0: any free port) from a daemon thread."""

    def __init__(self, route: Route, host: str, port: int, *, name: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            timeout = CLIENT_TIMEOUT

            def do_GET(self) -> None:
                code, body, content_type = route(self.path.split("?", 1)[0])
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = _server_class(host)((host, port), Handler)
        self.address = tuple(self.httpd.server_address[:2])
        self.port = int(self.address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5}, name=name, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

"""How uvicorn runs the service: bounded connections, header sizes and times, so slow clients cannot hold it.

uvicorn's defaults trust the client: no limit on open connections, and no deadline for request headers (its
keep-alive timer stops at a connection's first byte, so a client that sends half a header line and waits holds
the connection for ever). :func:`server_config` sets a connection limit (more get 503), the largest header
block (16 KiB), the keep-alive time, and runs :class:`HeaderDeadline`: request headers must be complete
within ``header_timeout`` seconds of the connection opening or of the previous answer, else 408 and close.
The body's own deadline is :class:`~hybridcxr.serve.uploads.UploadLimit`'s (a body reaches the app).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

log = logging.getLogger("hybridcxr.serve")

#: Seconds a client has to send its request headers.
DEFAULT_HEADER_TIMEOUT = 30.0
#: Seconds an idle keep-alive connection stays open between requests.
DEFAULT_KEEP_ALIVE = 5
#: Open connections at most; more get 503 (the CPU does a few analyses at a time; the rest would only wait).
DEFAULT_LIMIT_CONCURRENCY = 64
#: Largest request-line-plus-headers block in bytes (uvicorn's h11 default, set explicitly).
MAX_HEADER_BYTES = 16 * 1024
_TIMEOUT_BODY = b'{"error": "request_timeout", "detail": "the request headers did not arrive in time"}'
_TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                   b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request headers: 408 and close when they are late."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self._deadline is not None and self.conn.their_state is not h11.IDLE:  # the headers are in
            self._deadline.cancel()
            self._deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE:  # waiting for the next request's headers
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.header_timeout, self._late)

    def _late(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # a part of a request came: say why it is closed
            log.info("closed a connection whose request headers took over %.0f s", self.header_timeout)
            self.transport.write(_TIMEOUT_ANSWER)
        self.transport.close()


def deadline_protocol(header_timeout: float) -> type[HeaderDeadline]:
    """:class:`HeaderDeadline` with its own ``header_timeout`` (uvicorn builds one protocol per connection)."""
    if header_timeout <= 0:
        raise ValueError(f"header_timeout must be positive, not {header_timeout}")
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": header_timeout})


def server_config(app: ASGIApp, *, host: str = "127.0.0.1", port: int = 8000,
                  header_timeout: float = DEFAULT_HEADER_TIMEOUT, keep_alive: int = DEFAULT_KEEP_ALIVE,
                  limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration :func:`~hybridcxr.serve.app.serve` runs ``app`` with (``options``: more of
    uvicorn.Config's, e.g. ``log_config=None`` in tests)."""
    import uvicorn

    settings: dict[str, Any] = {"log_level": "info", "timeout_graceful_shutdown": 10, **options}
    return uvicorn.Config(app, host=host, port=port, http=deadline_protocol(header_timeout),
                          timeout_keep_alive=keep_alive, limit_concurrency=limit_concurrency,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, **settings)


__all__ = ["DEFAULT_HEADER_TIMEOUT", "DEFAULT_KEEP_ALIVE", "DEFAULT_LIMIT_CONCURRENCY", "MAX_HEADER_BYTES",
           "HeaderDeadline", "deadline_protocol", "server_config"]

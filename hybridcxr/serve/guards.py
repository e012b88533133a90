"""Guards of the service against hostile clients: the Host check, JSON for every error, no reflected input.

- :class:`TrustedHosts`: Starlette's ``TrustedHostMiddleware`` decides; a foreign ``Host`` gets the service's
  JSON 400. Without it a web page on another site could DNS-rebind its own name to 127.0.0.1 and drive an
  unkeyed service from a browser; with it, that request carries the page's host name and is refused.
- :class:`InternalErrors`: an exception nothing else handled becomes ``{"error": "internal_error", ...}`` 500,
  with no traceback or temporary path in the answer; the log gets the class and where it was raised.
- :func:`invalid_request`: FastAPI's 422 for a malformed request, in the service's shape, naming the field and
  the problem without echoing what the client sent (FastAPI's own answer repeats the input).
"""

from __future__ import annotations

import logging
import re
import tempfile
import traceback
from collections.abc import Iterable
from pathlib import Path

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybridcxr.serve.uploads import ServiceError, error_response

log = logging.getLogger("hybridcxr.serve")

#: Names of this machine's loopback service, allowed when it listens on loopback.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", "[::]", ""})
_HOST_OK = "hybridcxr.host_ok"
_TEMP_PATH = re.compile(re.escape(tempfile.gettempdir()) + r"/\S*")


def trusted_hosts(host: str, extra: Iterable[str] | None = None) -> list[str]:
    """The Host names the service answers to when it listens on ``host``, plus ``extra``.

    Loopback (127.0.0.1, localhost, ::1) allows its three names; another address allows itself. Listening on
    every address (0.0.0.0, ::) needs the names clients use, given in ``extra`` (CLI ``--allowed-host``).

    >>> trusted_hosts("127.0.0.1")
    ['127.0.0.1', 'localhost', '[::1]']
    """
    names = [name.strip().lower() for name in extra or () if name.strip()]
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        own = list(LOOPBACK_HOSTS)
    elif host in _ANY_ADDRESS:
        if not names:
            raise ValueError(f"listening on {host or 'every address'} needs the host names clients use "
                             "(allowed_hosts, CLI --allowed-host NAME): a Host check cannot guess them")
        own = []
    else:
        own = [f"[{host}]" if ":" in host and not host.startswith("[") else host.lower()]
    return list(dict.fromkeys(own + names))


class TrustedHosts:
    """ASGI middleware: Starlette's TrustedHostMiddleware decides; a refused Host gets a JSON 400."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed = list(allowed_hosts)
        self.check = TrustedHostMiddleware(_mark_accepted, allowed_hosts=self.allowed, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # the service has no websocket route: the router refuses those
            await self.check(scope, receive, _discard)  # Starlette's verdict: accepted marks the scope
            if not scope.pop(_HOST_OK, False):
                log.info("refused %s %s: Host not allowed", scope["method"], scope["path"][:80])
                response = error_response(400, "invalid_host", "the Host header names no host this server "
                                                               "answers to (server option --allowed-host)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _mark_accepted(scope: Scope, receive: Receive, send: Send) -> None:
    scope[_HOST_OK] = True


async def _discard(message: Message) -> None:
    """Where Starlette's plain-text refusal goes: the JSON one is sent instead."""


class InternalErrors:
    """ASGI middleware: an unhandled exception becomes the service's JSON 500 and one ERROR log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ServiceError as err:  # raised where no exception handler runs (e.g. a middleware)
            if not started:
                await err.response()(scope, receive, send)
        except Exception as err:  # noqa: BLE001 - the last line: whatever it is, the client gets JSON
            log.error("internal error on %s %s: %s", scope["method"], scope["path"][:80], describe(err))
            if not started:
                response = error_response(500, "internal_error", "the server failed on this request; the error "
                                                                 "is logged (no details are sent)")
                await response(scope, receive, send)


def describe(err: BaseException) -> str:
    """``ValueError at module.py:123 in func: message`` with temporary paths cut out and the message shortened.

    The message is kept to 120 characters and stripped of temporary paths, where an upload lives.
    """
    frames = traceback.extract_tb(err.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    message = _TEMP_PATH.sub("<upload>", str(err)).replace("\n", " ")
    message = message[:117] + "..." if len(message) > 120 else message
    return f"{type(err).__name__}{where}" + (f": {message}" if message else "")


async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """422 in the service's shape for a request FastAPI could not validate: where and what, never the input."""
    problems = []
    for error in err.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "request"
        problems.append(f"{where[:60]}: {str(error.get('msg', 'invalid'))[:80]}")
    return error_response(422, "invalid_request", "; ".join(problems) or "the request is not valid")


__all__ = ["LOOPBACK_HOSTS", "InternalErrors", "TrustedHosts", "describe", "invalid_request", "trusted_hosts"]

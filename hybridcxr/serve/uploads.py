"""Upload checks of the service: a size limit enforced before the body is parsed, the file type told by content.

Why here and not in the route: FastAPI parses a multipart body completely before the route runs, so a limit
checked there would only be checked after a 2 GB upload sat on disk. :class:`UploadLimit` refuses a request
whose ``Content-Length`` is over the limit at once and stops a chunked one as soon as it passes it. It also
puts a deadline on the body (uvicorn has none): a client that stalls for ``body_timeout`` seconds, or sends
slower than ``min_body_rate`` bytes/s once that grace is spent, gets 408 and the connection is closed, so
slow senders cannot hold the server's connections open.
"""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybridcxr.io.read import Format, sniff_bytes

MIB = 1 << 20
#: Room for the multipart framing and the small form fields (age, sex) beside the file itself.
MULTIPART_SLACK = 64 * 1024
#: Seconds a client may stall while sending a request body (and the grace before the rate floor applies).
DEFAULT_BODY_TIMEOUT = 30.0
#: Slowest average body rate accepted after the grace, bytes/s (a 50 MiB upload may take 13 minutes).
DEFAULT_MIN_BODY_RATE = 64 * 1024
#: Headers of an answer after which the client's connection is not reused (the rest of its body is unread).
CLOSE = {"Connection": "close"}

_DICOM_TYPES = frozenset({"application/dicom", "application/dicom+octet-stream"})


class ServiceError(HTTPException):
    """An error the service answers with ``{"error": code, "detail": message}`` and an HTTP status."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.code = code

    def response(self) -> JSONResponse:
        """The JSON response this error is answered with."""
        return error_response(self.status_code, self.code, str(self.detail), self.headers)


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": code, "detail": detail}`` with ``status``: one shape for every error the service makes."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def too_large(limit: int, size: int | None = None) -> ServiceError:
    """413 naming the limit (and the size where known)."""
    got = f"{size / MIB:.1f} MiB " if size is not None else ""
    return ServiceError(413, "upload_too_large",
                        f"the upload {got}exceeds the limit of {limit / MIB:.4g} MiB (server option --max-upload-mb)",
                        headers=CLOSE)


def too_slow(received: int, seconds: float) -> ServiceError:
    """408 for a body that stalled or trickled: the connection is closed after the answer."""
    return ServiceError(408, "request_timeout", f"the request body stopped arriving or came too slowly "
                                                f"({received:,} bytes in {seconds:.0f} s; server option --timeout)",
                        headers=CLOSE)


def sniff_upload(head: bytes, content_type: str | None) -> Format:
    """The upload's format from its first 132 bytes (:func:`~hybridcxr.io.read.sniff_bytes`).

    The declared content type is believed only for what bytes cannot show: a DICOM without its 128-byte
    preamble is accepted when sent as ``application/dicom`` (decoding then decides). Anything else is 415,
    whose message never repeats the declared type (a client's header bytes are not reflected).

    Raises:
        ServiceError: 415 for a file that is none of DICOM, PNG or JPEG; 422 for an empty one.

    >>> sniff_upload(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(10), "application/octet-stream")
    'png'
    """
    if not head:
        raise ServiceError(422, "empty_upload", "the uploaded file is empty")
    kind = sniff_bytes(head)
    if kind is not None:
        return kind
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared in _DICOM_TYPES:
        return "dicom"
    raise ServiceError(415, "unsupported_type",
                       "unsupported file type: the bytes are not a DICOM file ('DICM' at byte 128), a PNG or a JPEG "
                       "(a declared content type counts only as application/dicom, for a DICOM without preamble)")


class UploadLimit:
    """ASGI middleware: 413 for a POST body larger than ``max_body`` bytes, before it is parsed or stored; 408
    for one that stalls ``body_timeout`` seconds or averages under ``min_body_rate`` bytes/s after that grace."""

    def __init__(self, app: ASGIApp, max_body: int, file_limit: int, body_timeout: float = DEFAULT_BODY_TIMEOUT,
                 min_body_rate: float = DEFAULT_MIN_BODY_RATE) -> None:
        if body_timeout <= 0 or min_body_rate <= 0:
            raise ValueError(f"body_timeout and min_body_rate must be positive, not {body_timeout}, {min_body_rate}")
        self.app, self.max_body, self.file_limit = app, max_body, file_limit
        self.body_timeout, self.min_body_rate = body_timeout, min_body_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body:
            await too_large(self.file_limit, length).response()(scope, receive, send)
            return
        received, more, start = 0, True, time.monotonic()

        async def limited() -> Message:
            nonlocal received, more
            if not more:  # the body is complete: waiting for a disconnect has no deadline
                return await receive()
            message = await self._within_deadline(receive, received, start)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if received > self.max_body:  # raised inside body parsing: FastAPI re-raises HTTPExceptions
                    raise too_large(self.file_limit)
            return message

        await self.app(scope, limited, send)

    async def _within_deadline(self, receive: Receive, received: int, start: float) -> Message:
        """The next body message; 408 when it does not come within the stall timeout or the rate floor's time."""
        elapsed = time.monotonic() - start
        wait = min(self.body_timeout, self.body_timeout + received / self.min_body_rate - elapsed)
        try:
            if wait <= 0:
                raise TimeoutError
            return await asyncio.wait_for(receive(), wait)
        except TimeoutError:
            raise too_slow(received, time.monotonic() - start) from None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


__all__ = ["CLOSE", "DEFAULT_BODY_TIMEOUT", "DEFAULT_MIN_BODY_RATE", "MIB", "ServiceError", "UploadLimit",
           "error_response", "sniff_upload", "too_large", "too_slow"]

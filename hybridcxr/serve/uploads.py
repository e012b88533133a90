"""Upload checks of the service: a size limit enforced before the body is parsed, the file type told by content.

Why here and not in the route: FastAPI parses a multipart body completely before the route runs, so a limit
checked there would only be checked after a 2 GB upload sat on disk. :class:`UploadLimit` refuses a request
whose ``Content-Length`` is over the limit at once and stops a chunked one as soon as it passes it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybridcxr.io.read import Format, sniff_bytes

MIB = 1 << 20
#: Room for the multipart framing and the small form fields (age, sex) beside the file itself.
MULTIPART_SLACK = 64 * 1024

_DICOM_TYPES = frozenset({"application/dicom", "application/dicom+octet-stream"})


class ServiceError(HTTPException):
    """An error the service answers with ``{"error": code, "detail": message}`` and an HTTP status."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(status_code=status, detail=detail)
        self.code = code

    def response(self) -> JSONResponse:
        """The JSON response this error is answered with."""
        return error_response(self.status_code, self.code, str(self.detail))


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    """``{"error": code, "detail": detail}`` with ``status``: one shape for every error the service makes."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def too_large(limit: int, size: int | None = None) -> ServiceError:
    """413 naming the limit (and the size where known)."""
    got = f"{size / MIB:.1f} MiB " if size is not None else ""
    return ServiceError(413, "upload_too_large",
                        f"the upload {got}exceeds the limit of {limit / MIB:.4g} MiB (server option --max-upload-mb)")


def sniff_upload(head: bytes, content_type: str | None) -> Format:
    """The upload's format from its first 132 bytes (:func:`~hybridcxr.io.read.sniff_bytes`).

    The declared content type is believed only for what bytes cannot show: a DICOM without its 128-byte
    preamble is accepted when sent as ``application/dicom`` (decoding then decides). Anything else is 415.

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
                       f"unsupported file type (declared {declared or 'no content type'}): expected a DICOM file "
                       "('DICM' at byte 128), a PNG or a JPEG")


class UploadLimit:
    """ASGI middleware: 413 for a POST body larger than ``max_body`` bytes, before it is parsed or stored."""

    def __init__(self, app: ASGIApp, max_body: int, file_limit: int) -> None:
        self.app, self.max_body, self.file_limit = app, max_body, file_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body:
            await too_large(self.file_limit, length).response()(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:  # raised inside body parsing: FastAPI re-raises HTTPExceptions
                    raise too_large(self.file_limit)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


__all__ = ["MIB", "ServiceError", "UploadLimit", "error_response", "sniff_upload", "too_large"]

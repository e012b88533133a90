"""The HTTP face of hybridcxr: FastAPI over the same :class:`~hybridcxr.pipeline.Analyzer` the CLI uses.

Routes::

    POST /v1/analyze            multipart field ``file`` (DICOM, PNG or JPEG), optional ``age``, ``sex``
    GET  /v1/overlay/{id}.png   the overlay of a recent analysis (``?boxes=false``: without boxes)
    GET  /v1/sr/{id}.dcm        the DICOM Structured Report (TID 1500) of a recent analysis of a DICOM upload
    GET  /healthz               liveness; answers while an analysis runs; the batches run so far
    GET  /                      a self-contained viewer page (no CDN, nothing downloaded)
    GET  /docs                  the API described from /openapi.json by a local page (no CDN)

Errors are JSON ``{"error": code, "detail": message}``: 400 a Host header this server does not answer to,
401 missing or wrong ``X-API-Key`` (when a key is set), 408 a request that came too slowly, 413 upload over
the limit, 415 not DICOM/PNG/JPEG, 422 undecodable, not a chest radiograph or a malformed request, 500 an
internal error (logged; no details sent). No error repeats a header the client sent.

Concurrent analyses run in batches (``max_batch`` requests at most, gathered within ``batch_window_ms``; see
:mod:`hybridcxr.serve.batching`); the app's shutdown finishes the batches queued before it stops the worker.

>>> app = create_app("runs/classifier", max_upload_bytes=20 << 20)  # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Receive, Scope, Send

from hybridcxr import __version__
from hybridcxr.serve import schema
from hybridcxr.serve.docs import DOCS_CSP, DOCS_HTML
from hybridcxr.serve.batching import DEFAULT_BATCH_WINDOW_MS, DEFAULT_MAX_BATCH
from hybridcxr.serve.guards import InternalErrors, TrustedHosts, invalid_request, trusted_hosts
from hybridcxr.serve.results import overlay_png
from hybridcxr.serve.server import DEFAULT_HEADER_TIMEOUT, server_config
from hybridcxr.serve.service import (
    DEFAULT_MAX_DECODES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    AnalysisService,
)
from hybridcxr.serve.uploads import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MIN_BODY_RATE,
    MULTIPART_SLACK,
    ServiceError,
    UploadLimit,
    error_response,
)

API_KEY_ENV = "HYBRIDCXR_API_KEY"
API_KEY_HEADER = "X-API-Key"
_ID = re.compile(r"^[0-9a-f]{32}$")
#: The viewer runs only its own inline script and shows only this server's and blob: images.
_VIEWER_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:; "
               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
_ERRORS = {code: {"model": schema.Error, "description": text} for code, text in {
    400: "a Host header this server does not answer to (server option --allowed-host)",
    401: "missing or wrong X-API-Key (only when the server has a key)",
    408: "the request body stalled or came too slowly (server option --timeout)",
    413: "upload over the server's limit", 415: "not a DICOM, PNG or JPEG file",
    422: "undecodable, not a chest radiograph (e.g. a CT DICOM), a bad age/sex or a malformed request",
    500: "an internal error (logged; no details are sent)"}.items()}

log = logging.getLogger("hybridcxr.serve")


def create_app(run: str | Path, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, api_key: str | None = None,
               device: str | None = None, cache_size: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS,
               host: str = "127.0.0.1", allowed_hosts: Iterable[str] | None = None,
               body_timeout: float = DEFAULT_BODY_TIMEOUT, min_body_rate: float = DEFAULT_MIN_BODY_RATE,
               max_decodes: int = DEFAULT_MAX_DECODES, batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
               max_batch: int = DEFAULT_MAX_BATCH, runtime: str = "torch") -> FastAPI:
    """Load a classifier run once and return the service's FastAPI app.

    Args:
        run: a classifier run folder (from ``hybridcxr train classifier``).
        max_upload_bytes: larger uploads get 413 before their body is stored.
        api_key: when set (default: env ``HYBRIDCXR_API_KEY``; ``""`` for none), ``/v1/*`` needs header
            ``X-API-Key`` equal to it; ``/``, ``/healthz`` and the docs stay open (they hold no patient data).
        device: cpu, cuda or cuda:N [CUDA when available].
        cache_size: analyses whose overlays stay available (least recently used dropped first).
        max_pixels: images whose header claims more pixels get 422 before they are decoded.
        host: the address served; its names are the allowed ``Host`` headers (127.0.0.1: 127.0.0.1,
            localhost and [::1]); 0.0.0.0 or :: needs ``allowed_hosts``.
        allowed_hosts: more ``Host`` names to answer (e.g. the proxy's public name; ``"*"``: any). Any other
            gets 400, so a DNS-rebinding web page cannot drive the service from a browser.
        body_timeout: seconds a request body may stall (and the grace before ``min_body_rate``), else 408.
        min_body_rate: slowest average body rate in bytes/s accepted after that grace.
        max_decodes: uploads decoded at once; decoded images waiting for or in the networks hold at most this
            many images at the pixel limit (each holds a full-resolution image).
        batch_window_ms: milliseconds a batch waits for more requests after its first arrived (0 to 10000).
        max_batch: requests analyzed in one batch at most (1 to 64; 1: one at a time, batching off).
        runtime: ``torch``, ``onnx`` for onnxruntime on the run's ONNX export (``hybridcxr export``), or
            ``onnx-int8`` for the same with the detector in int8 (``hybridcxr export --int8``).

    Raises:
        InputError: ``run`` is not a usable classifier run folder.
        ValueError: ``host`` listens on every address and ``allowed_hosts`` is empty, or a batching setting
            is out of range.
    """
    hosts = trusted_hosts(host, allowed_hosts)  # before the models load: a usage error fails fast
    service = AnalysisService(run, device=device, max_upload_bytes=max_upload_bytes, cache_size=cache_size,
                              max_pixels=max_pixels, max_decodes=max_decodes, batch_window_ms=batch_window_ms,
                              max_batch=max_batch, runtime=runtime)
    key = (api_key if api_key is not None else os.environ.get(API_KEY_ENV)) or None  # "": no key

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(service.close)  # shutdown: the queued batches finish first

    app = FastAPI(title="hybridcxr", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Chest X-ray findings: YOLOv8 boxes fused with CNN embeddings and demographics. "
                              "Research use only, not for diagnosis. Requests that arrive together are "
                              f"analyzed as one batch: up to {max_batch} gathered within {batch_window_ms:g} ms "
                              "(server options --max-batch, --batch-window-ms); each gets only its own result "
                              "or error. GET /healthz counts the batches run.")
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, err: ServiceError) -> JSONResponse:
        return err.response()

    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_middleware(UploadLimit, max_body=max_upload_bytes + MULTIPART_SLACK, file_limit=max_upload_bytes,
                       body_timeout=body_timeout, min_body_rate=min_body_rate)
    if key is not None:
        app.add_middleware(ApiKeyGuard, key=key)  # no body of a stranger is read
    app.add_middleware(TrustedHosts, allowed_hosts=hosts)  # before the key: a rebinding page learns nothing
    app.add_middleware(InternalErrors)  # outermost: whatever fails inside answers JSON
    _add_routes(app, service)
    return app


def _add_routes(app: FastAPI, service: AnalysisService) -> None:
    """The API under /v1 (behind the key), liveness, the viewer page and the local docs page."""
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="needed when the server has a key")
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(header)], responses=_ERRORS)
    viewer = (files("hybridcxr") / "assets" / "viewer.html").read_text(encoding="utf-8")

    @v1.post("/analyze", response_model=schema.Analysis, summary="Detect and classify one radiograph")
    async def analyze(
        file: Annotated[UploadFile, File(description="DICOM, PNG or JPEG (told by content)")],
        age: Annotated[str | None, Form(description="override the header's age: 62, 062Y, 003M")] = None,
        sex: Annotated[str | None, Form(description="override the header's sex: M or F")] = None,
    ) -> JSONResponse:
        record = await run_in_threadpool(service.analyze_upload, file.file, file.content_type, age, sex)
        return JSONResponse(schema.Analysis.model_validate(record).model_dump(mode="json"),
                            headers={"Cache-Control": "private, no-store"})

    @v1.get("/overlay/{analysis_id}.png", response_class=Response, summary="Overlay of a recent analysis",
            responses={200: {"content": {"image/png": {}}}, 404: {"model": schema.Error}})
    async def overlay(analysis_id: str, boxes: Annotated[bool, Query(description="draw the boxes")] = True) -> Response:
        if not _ID.match(analysis_id):
            raise ServiceError(404, "unknown_id", "not an analysis id (32 hexadecimal digits)")
        png = await run_in_threadpool(overlay_png, service.stored(analysis_id), boxes=boxes)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    @v1.get("/sr/{analysis_id}.dcm", response_class=Response, summary="Structured Report of a recent analysis",
            responses={200: {"content": {"application/dicom": {}}}, 404: {"model": schema.Error}})
    async def structured_report(analysis_id: str) -> Response:
        if not _ID.match(analysis_id):
            raise ServiceError(404, "unknown_id", "not an analysis id (32 hexadecimal digits)")
        lazy = service.stored(analysis_id).sr
        sr = None if lazy is None else await run_in_threadpool(lazy.get)
        if sr is None:
            raise ServiceError(404, "no_sr", "this analysis was of a PNG or JPEG upload: a Structured Report "
                                             "references a DICOM instance, so there is none")
        return Response(sr, media_type="application/dicom", headers={"Cache-Control": "private, no-store"})

    app.include_router(v1)

    @app.get("/healthz", response_model=schema.Health, summary="Liveness, and the batches run so far")
    async def healthz() -> dict:
        return {"status": "ok", "busy": service.busy, "results_kept": len(service.results),
                "model": f"{service.model['kind']} card v{service.model['card_version']}",
                "batching": service.batcher.stats()}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(viewer, headers={"Content-Security-Policy": _VIEWER_CSP, "Cache-Control": "no-cache"})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_HTML, headers={"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"})


class ApiKeyGuard:
    """ASGI middleware: 401 for ``/v1/*`` without header ``X-API-Key`` equal to ``key`` (constant-time compare)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _route_path(scope).startswith("/v1/"):
            given = dict(scope.get("headers", [])).get(API_KEY_HEADER.lower().encode())
            if given is None or not hmac.compare_digest(given, self.key):
                log.info("refused %s %s: no valid API key", scope["method"], scope["path"][:80])
                response = error_response(401, "unauthorized", f"missing or wrong {API_KEY_HEADER} header")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the mount point or ``--root-path`` prefix (else a key check on the
    full path could be bypassed by mounting the app under a prefix)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def configure_logging(level: int = logging.INFO) -> None:
    """Send the service's log lines (ids, sizes, timings; never names) to stderr beside uvicorn's."""
    logger = logging.getLogger("hybridcxr.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def serve(run: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, device: str | None = None,
          allowed_hosts: Iterable[str] | None = None, timeout: float = DEFAULT_HEADER_TIMEOUT,
          max_decodes: int = DEFAULT_MAX_DECODES, batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
          max_batch: int = DEFAULT_MAX_BATCH, runtime: str = "torch") -> None:
    """Load the models, then serve the app with uvicorn until interrupted (one process, one model copy).

    ``timeout`` bounds the seconds a client may take over its request headers and stall within its body (see
    :func:`~hybridcxr.serve.server.server_config` for the connection limits).
    """
    import uvicorn

    configure_logging()
    app = create_app(run, max_upload_bytes=max_upload_bytes, device=device, host=host, allowed_hosts=allowed_hosts,
                     body_timeout=timeout, max_decodes=max_decodes, batch_window_ms=batch_window_ms,
                     max_batch=max_batch, runtime=runtime)
    if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(API_KEY_ENV):
        log.warning("listening on %s without an API key: set %s or keep 127.0.0.1 behind a proxy", host, API_KEY_ENV)
    uvicorn.Server(server_config(app, host=host, port=port, header_timeout=timeout)).run()


__all__ = ["API_KEY_ENV", "ApiKeyGuard", "configure_logging", "create_app", "serve"]

"""The service against hostile clients: Host check, slow clients on a real uvicorn, JSON for every error, no
reflected header bytes, a docs page that loads nothing from elsewhere, and memory bounded before decoding."""

from __future__ import annotations

import io
import logging
import re
import socket
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from serve.test_api import app_factory, assert_error, post
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

SHORT = 2.0  # seconds: the timeouts of the live server


@pytest.fixture(scope="module")
def make_app(tiny_classifier):
    """``make_app(**options)`` on the tiny classifier run (models loaded once); Host ``testserver`` allowed
    unless ``allowed_hosts`` is given."""
    return app_factory(tiny_classifier)


@pytest.fixture(scope="module")
def client(make_app):
    with TestClient(make_app()) as http:
        yield http


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.arange(width * height) % 251).astype(np.uint8).reshape(height, width)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("L", (64, 64)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _dicom_without_size() -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.1.1", generate_uid(), "DX"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- 1. Host check ---------------------------------------------------------------------------------------------
def test_a_foreign_host_gets_json_400_before_anything_runs(make_app, monkeypatch):
    app = make_app(allowed_hosts=None)  # the default for 127.0.0.1: its three loopback names only
    ran = []
    monkeypatch.setattr(app.state.service, "analyze_upload", lambda *a, **k: ran.append(a))
    with TestClient(app, base_url="http://127.0.0.1:8000") as http:
        assert http.get("/healthz").status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert http.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("rebind.attacker.example", "testserver", "127.0.0.1.attacker.example", "[::2]"):
            body = assert_error(http.get("/healthz", headers={"Host": host}), 400, "invalid_host", "--allowed-host")
            assert "attacker" not in body["detail"]
        refused = http.post("/v1/analyze", headers={"Host": "rebind.attacker.example"},
                            files={"file": ("a.png", _png(100, 100), "image/png")})
        assert_error(refused, 400, "invalid_host")
    assert not ran, "a refused Host reaches no route"
    with TestClient(make_app(allowed_hosts=["cxr.hospital.example"])) as http:  # a name added to the defaults
        assert http.get("/healthz", headers={"Host": "cxr.hospital.example"}).status_code == 200
        assert http.get("/healthz", headers={"Host": "localhost"}).status_code == 200
        assert http.get("/healthz").status_code == 400  # "testserver" was not asked for


def test_trusted_hosts_default_to_the_served_address():
    from hybridcxr.serve.guards import trusted_hosts

    assert trusted_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    assert trusted_hosts("10.1.2.3", ["CXR.example"]) == ["10.1.2.3", "cxr.example"]
    assert trusted_hosts("::1") == ["127.0.0.1", "localhost", "[::1]"]
    assert trusted_hosts("0.0.0.0", ["cxr.example"]) == ["cxr.example"]
    for anywhere in ("0.0.0.0", "::"):
        with pytest.raises(ValueError, match="allowed"):
            trusted_hosts(anywhere)


def test_serve_command_takes_allowed_hosts_and_needs_them_on_every_address(tmp_path):
    from typer.testing import CliRunner

    from hybridcxr.cli import app

    runner = CliRunner()
    bare = runner.invoke(app, ["serve", "--model", str(tmp_path), "--host", "0.0.0.0"])
    assert bare.exit_code == 2 and "--allowed-host" in bare.output
    named = runner.invoke(app, ["serve", "--model", str(tmp_path), "--host", "0.0.0.0", "--allowed-host", "a.example",
                                "--allowed-host", "b.example", "--timeout", "5", "--max-decodes", "1"])
    assert named.exit_code == 1 and "not a classifier run folder" in named.output  # the options parsed


# -- 2. slow clients on a real uvicorn --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(make_app):
    """The service under uvicorn, configured as ``serve()`` does, with 2 s timeouts, on a free loopback port."""
    import uvicorn

    from hybridcxr.serve.server import server_config

    app = make_app(allowed_hosts=None, body_timeout=SHORT, min_body_rate=1000)
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=0, header_timeout=SHORT, log_config=None,
                                          log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(timeout=15)


def _exchange(port: int, head: bytes, trickle: float | None = None, limit: float = 4 * SHORT) -> tuple[float, bytes]:
    """Send ``head`` (then one byte every ``trickle`` s, where given) and read until the server closes;
    returns (seconds until closed, what it answered)."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
        start = time.monotonic()
        sock.sendall(head)
        answer, last_sent = b"", start
        while time.monotonic() - start < limit:
            if trickle is not None and time.monotonic() - last_sent >= trickle:
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                last_sent = time.monotonic()
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                return time.monotonic() - start, answer
            answer += chunk
        return time.monotonic() - start, answer


_UPLOAD_HEAD = (b"POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n")


def test_a_body_that_stalls_gets_408_and_the_connection_closed(live):
    took, answer = _exchange(live, _UPLOAD_HEAD)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer and b"connection: close" in answer.lower()
    assert SHORT - 0.5 < took < SHORT + 2, f"closed after {took:.1f} s"


def test_a_body_that_trickles_below_the_floor_gets_408(live):
    took, answer = _exchange(live, _UPLOAD_HEAD, trickle=0.25)  # a byte every 0.25 s never stalls 2 s
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert took < 2 * SHORT + 1, f"closed after {took:.1f} s"


def test_headers_that_stall_get_408_and_an_idle_connection_is_closed(live):
    took, answer = _exchange(live, b"POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer[:200]
    assert took < SHORT + 2, f"closed after {took:.1f} s"
    took, answer = _exchange(live, b"")  # opened, nothing sent: uvicorn alone would wait for ever
    assert answer == b"" and took < SHORT + 2, f"closed after {took:.1f} s"


def test_a_prompt_client_is_served_on_the_same_server(live):
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{live}", timeout=30) as http:
        assert http.get("/healthz").status_code == 200
        answer = http.post("/v1/analyze", files={"file": ("a.png", _png(128, 128), "image/png")})
        assert answer.status_code == 200, answer.text


def test_server_config_bounds_connections_and_header_size():
    from hybridcxr.serve.server import HeaderDeadline, server_config

    config = server_config(object(), host="127.0.0.1", port=8000)  # type: ignore[arg-type]
    assert config.limit_concurrency == 64 and config.timeout_keep_alive == 5
    assert config.h11_max_incomplete_event_size == 16 * 1024
    assert issubclass(config.http, HeaderDeadline) and config.http.header_timeout == 30


# -- 3. JSON for every error -----------------------------------------------------------------------------------
def test_an_unhandled_exception_gives_json_500_without_traceback_or_paths(client, monkeypatch, caplog):
    secret = f"{tempfile.gettempdir()}/hybridcxr-serve-abc/0123.png"
    analyzer = client.app.state.service.analyzer

    def broken(*args, **kwargs):
        raise RuntimeError(f"network exploded reading {secret}")

    monkeypatch.setattr(analyzer, "analyze", broken)
    with caplog.at_level(logging.INFO, logger="hybridcxr.serve"):
        answer = post(client, "a.png", _png(128, 128), kind="image/png")
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json", answer.text
    body = answer.json()
    assert body["error"] == "internal_error" and set(body) == {"error", "detail"}
    assert "Traceback" not in answer.text and "exploded" not in answer.text and "hybridcxr-serve" not in answer.text
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "RuntimeError" in errors[0].getMessage(), caplog.text
    assert "hybridcxr-serve" not in caplog.text and "Traceback" not in caplog.text
    assert client.get("/healthz").status_code == 200, "the service goes on"


# -- 4. no header bytes reflected --------------------------------------------------------------------------------
def test_422_and_415_name_the_problem_without_echoing_the_clients_bytes(client):
    marker = "x-evil-7f3a9"
    cases = [
        client.post("/v1/analyze", data={"file": marker}, headers={"X-Probe": marker}),  # a field, not a file
        client.post("/v1/analyze", data={"age": "60"}, headers={"X-Probe": marker}),  # no file
        client.post("/v1/analyze", files={"file": ("a.bin", b"plain text " * 20, f"text/{marker}")}),
    ]
    assert_error(cases[0], 422, "invalid_request", "file")
    assert_error(cases[1], 422, "invalid_request", "file", "required")
    assert_error(cases[2], 415, "unsupported_type")
    for answer in cases:
        assert marker not in answer.text, answer.text
        assert "input" not in answer.json(), "FastAPI's own 422 repeats the input"


# -- 5. docs offline ---------------------------------------------------------------------------------------------
def test_docs_page_loads_nothing_from_another_host(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert not re.search(r"https?://", html), "no absolute URL: nothing from a CDN"
    assert not re.search(r"""(src|href)\s*=\s*["']?//""", html) and "@import" not in html
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    targets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"""fetch\("([^"]+)"\)""", html)
    assert "openapi.json" in targets
    for target in targets:
        assert client.get(f"/{target.lstrip('/')}").status_code == 200, target
    assert client.get("/redoc").status_code == 404, "ReDoc would load from a CDN"


# -- 6. memory bounds --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "content", "code"), [
    ("cut.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "undecodable"),  # unreadable header: no "let cv2 try"
    ("bomb.jpg", _jpeg_claiming(30_000, 30_000), "too_many_pixels"),  # Pillow refuses it as a bomb
    ("huge.png", _png(64, 64)[:16] + (40_000).to_bytes(4, "big") * 2 + _png(64, 64)[24:], "too_many_pixels"),
    ("nosize.dcm", _dicom_without_size(), "not_a_radiograph"),
])
def test_the_pixel_check_fails_closed_and_nothing_is_decoded(make_app, monkeypatch, name, content, code):
    from hybridcxr.serve import service

    decoded = []
    monkeypatch.setattr(service, "_decode", lambda path: decoded.append(path))
    with TestClient(make_app(max_pixels=10**9)) as http:  # above the Pillow-refused claims
        assert_error(post(http, name, content), 422, code)
    assert not decoded, "refused from the header: the decoder never ran"


def test_the_io_pixel_limit_is_a_422_too(client, monkeypatch):
    monkeypatch.setenv("HYBRIDCXR_MAX_PIXELS", "10000")  # hybridcxr.io's limit, under the service's
    assert_error(post(client, "a.png", _png(128, 128), kind="image/png"), 422, "too_many_pixels")


def test_concurrent_uploads_decode_at_most_max_decodes_at_once(make_app, monkeypatch):
    from hybridcxr.serve import service

    original, lock = service._decode, threading.Lock()
    state = {"now": 0, "peak": 0}

    def counting(path: Path):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            time.sleep(0.3)
            return original(path)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(service, "_decode", counting)
    answers = []
    with TestClient(make_app(max_decodes=2)) as http:
        threads = [threading.Thread(target=lambda: answers.append(post(http, "a.png", _png(128, 128))))
                   for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert [a.status_code for a in answers] == [200] * 6
    assert state["peak"] == 2, f"{state['peak']} decodes at once"

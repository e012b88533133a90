"""The FastAPI service through its HTTP face: analyze, overlays, limits and errors, API key, liveness under load."""

from __future__ import annotations

import io
import logging
import re
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from starlette.exceptions import StarletteDeprecationWarning

from hybridcxr.errors import RadiographWarning
from hybridcxr.serve.results import ResultStore, StoredResult
from hybridcxr.serve.uploads import sniff_upload

with warnings.catch_warnings():  # starlette asks for httpx2 (not a dependency); httpx still works
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

UDACITY = "dicom/nih-udacity"
NIH_PNG = "nih/images/00002578_000.png"


@pytest.fixture(scope="module")
def make_app(tiny_classifier):
    """``make_app(**options)``: the service on the tiny classifier run; the models are loaded once per module."""
    return app_factory(tiny_classifier)


def app_factory(tiny_classifier):
    """``build(**options)``: ``create_app`` on the tiny run with its models loaded once (test_edges uses it too).

    TestClient sends ``Host: testserver``, so the apps allow that name besides the loopback ones unless the
    test gives ``allowed_hosts``.
    """
    from hybridcxr import analyzer
    from hybridcxr.serve import create_app

    _, run, _ = tiny_classifier
    loaded = analyzer.Analyzer(run, device="cpu")

    def build(**options):
        options.setdefault("allowed_hosts", ["testserver"])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(analyzer, "Analyzer", lambda *args, **kwargs: loaded)
            return create_app(run, **options)

    return build


@pytest.fixture(scope="module")
def client(make_app):
    with TestClient(make_app()) as http:
        yield http


@pytest.fixture(scope="module")
def phantom_dicom(tiny_detector) -> Path:
    phantom, _, _ = tiny_detector
    return sorted((phantom / "test").glob("*.dicom"))[0]


def post(http: TestClient, path: Path | str, content: bytes | None = None, name: str | None = None,
         kind: str = "application/octet-stream", path_prefix: str = "", **form):
    data = Path(path).read_bytes() if content is None else content
    return http.post(f"{path_prefix}/v1/analyze", files={"file": (name or Path(path).name, data, kind)}, data=form)


def assert_error(response, status: int, code: str | tuple[str, ...], *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] in ((code,) if isinstance(code, str) else code), body
    for word in words:
        assert word.lower() in body["detail"].lower(), body
    assert "/tmp" not in body["detail"] and "hybridcxr-serve" not in body["detail"], "temporary paths stay inside"
    return body


# -- 200 --------------------------------------------------------------------------------------------------------
def test_real_dicom_gives_findings_boxes_demographics_and_model_facts(client, shared_data, tiny_classifier):
    _, _, card = tiny_classifier
    response = post(client, shared_data / UDACITY / "test1.dcm")
    assert response.status_code == 200, response.text
    body = response.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["image"].items() >= {"format": "dicom", "width": 1024, "height": 1024}.items()
    assert body["age_years"] == 81 and body["sex"] == "M"  # PatientAge written "81", PatientSex M
    assert body["demographics_source"] == {"age": "header", "sex": "header"}
    findings = body["findings"]
    assert sorted(f["finding"] for f in findings) == sorted(card["findings"])
    probabilities = [f["probability"] for f in findings]
    assert probabilities == sorted(probabilities, reverse=True) and all(0 <= p <= 1 for p in probabilities)
    for f in findings:
        if f["finding"] in card["unlearned"]:  # never learned: no decision, and the reason
            assert f["positive"] is None and "no positive image" in f["no_decision"]
        else:
            assert f["positive"] == (f["probability"] >= f["threshold"] - 1e-5) and f["no_decision"] is None
        assert f["threshold"] == pytest.approx(card["thresholds"][f["finding"]])
    for box in body["boxes"]:
        assert 0 <= box["x_min"] < box["x_max"] <= 1024 and 0 <= box["y_min"] < box["y_max"] <= 1024
    assert body["model"]["versions"] == card["versions"] and body["model"]["card_version"] == card["card_version"]
    assert body["model"]["findings"] == card["findings"]
    assert "prepared" not in str(body["model"]), "local training paths are not served"
    assert body["overlay"] == {"url": f"/v1/overlay/{body['id']}.png", "panel": {"width": 1024, "height": 1024}}


SIIM = "dicom/siim-acr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


@pytest.mark.parametrize("name", [f"{UDACITY}/test1.dcm", SIIM])
def test_dicom_upload_has_a_structured_report_in_its_study(client, shared_data, name):
    import highdicom as hd
    from _dicom3tools import dciodvfy_errors

    from hybridcxr.findings import CODES

    body = post(client, shared_data / name).json()
    assert body["sr"] == f"/v1/sr/{body['id']}.dcm"
    response = client.get(body["sr"])
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    sr = hd.sr.srread(io.BytesIO(response.content))
    source = pydicom.dcmread(shared_data / name, stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    rois = sr.content.get_planar_roi_measurement_groups()
    assert len(rois) == len(body["boxes"])
    for group, box in zip(rois, body["boxes"]):
        corners = np.asarray(group.roi.value)
        assert np.allclose([*corners.min(0), *corners.max(0)], [box[k] for k in ("x_min", "y_min", "x_max", "y_max")],
                           atol=0.5)
        assert group.finding_type.value == CODES[box["finding"]][0]
    image = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    for finding in body["findings"]:
        value = image[f"image: {finding['finding']}"].get_measurements()[0].value
        assert value == pytest.approx(finding["probability"], abs=1e-5)
    out = Path(tempfile.mkdtemp()) / "sr.dcm"
    out.write_bytes(response.content)
    assert dciodvfy_errors(out) == []


def test_the_structured_report_is_made_on_first_request_and_kept(client, shared_data, monkeypatch):
    import hybridcxr.dicom_out.sr as sr_module

    made = []
    real = sr_module.structured_report
    monkeypatch.setattr(sr_module, "structured_report", lambda *a, **k: made.append(1) or real(*a, **k))
    body = post(client, shared_data / SIIM).json()
    assert body["sr"] and made == []  # the POST answers without building it
    first = client.get(body["sr"])
    second = client.get(body["sr"])
    assert first.status_code == second.status_code == 200 and first.content == second.content and made == [1]


def test_png_upload_has_no_structured_report(client, shared_data):
    body = post(client, shared_data / NIH_PNG).json()
    assert body["sr"] is None
    assert_error(client.get(f"/v1/sr/{body['id']}.dcm"), 404, "no_sr", "PNG or JPEG")
    assert_error(client.get(f"/v1/sr/{'0' * 32}.dcm"), 404, "unknown_id")
    assert_error(client.get("/v1/sr/not-an-id.dcm"), 404, "unknown_id", "not an analysis id")


def test_service_and_cli_analyzer_agree(client, shared_data):
    """The service decodes and runs the same Analyzer as `hybridcxr classify`: same numbers."""
    path = shared_data / UDACITY / "test2.dcm"
    body = post(client, path).json()
    [cli] = list(client.app.state.service.analyzer.analyze_paths([path]))
    served = {f["finding"]: f["probability"] for f in body["findings"]}
    assert served == pytest.approx({k: round(v, 5) for k, v in cli.probabilities.items()}, abs=1e-5)
    assert len(body["boxes"]) == len(cli.detection.boxes)


def test_real_png_with_age_and_sex_from_the_form(client, shared_data):
    response = post(client, shared_data / NIH_PNG, kind="image/png", age="062Y", sex="f")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"]["format"] == "png" and (body["image"]["width"], body["image"]["height"]) == (1024, 1024)
    assert body["age_years"] == 62 and body["sex"] == "F"
    assert body["demographics_source"] == {"age": "request", "sex": "request"}
    unknown = post(client, shared_data / NIH_PNG).json()  # a PNG has no header: unknown, not guessed
    assert unknown["age_years"] is None and unknown["demographics_source"] == {"age": "unknown", "sex": "unknown"}


def test_overlay_after_analyze(client, phantom_dicom):
    body = post(client, phantom_dicom).json()
    width, height = body["image"]["width"], body["image"]["height"]
    for query, label in (("", "with boxes"), ("?boxes=false", "without boxes")):
        response = client.get(body["overlay"]["url"] + query)
        assert response.status_code == 200, label
        assert response.headers["content-type"] == "image/png" and "no-store" in response.headers["cache-control"]
        with Image.open(io.BytesIO(response.content)) as picture:
            assert picture.width > width and picture.height > height  # the image panel, a legend, a footer
    assert_error(client.get(f"/v1/overlay/{'0' * 32}.png"), 404, "unknown_id", "last 256")
    assert_error(client.get("/v1/overlay/not-an-id.png"), 404, "unknown_id", "not an analysis id")


def test_results_are_kept_in_a_bounded_lru():
    store = ResultStore(capacity=2)
    item = StoredResult(np.zeros((4, 4), np.uint8), None, {}, {}, ())  # type: ignore[arg-type]
    for key in "abc":
        store.put(key, item)
        if key == "b":
            assert store.get("a") is item  # touching "a" makes "b" the oldest
    assert len(store) == 2 and store.get("b") is None and store.get("a") is item and store.get("c") is item


# -- errors ----------------------------------------------------------------------------------------------------
def test_api_key_is_required_when_set(make_app, phantom_dicom, monkeypatch):
    monkeypatch.setenv("HYBRIDCXR_API_KEY", "s3cret-key")
    with TestClient(make_app()) as http:
        assert_error(post(http, phantom_dicom), 401, "unauthorized", "X-API-Key")
        missing = http.post("/v1/analyze", content=b"x" * 100, headers={"X-API-Key": "wrong"})
        assert_error(missing, 401, "unauthorized")
        assert_error(http.get(f"/v1/overlay/{'0' * 32}.png"), 401, "unauthorized")
        assert http.get("/healthz").status_code == 200 and http.get("/").status_code == 200
        good = http.post("/v1/analyze", headers={"X-API-Key": "s3cret-key"},
                         files={"file": ("a.dcm", phantom_dicom.read_bytes(), "application/dicom")})
        assert good.status_code == 200, good.text
        overlay = http.get(good.json()["overlay"]["url"], headers={"X-API-Key": "s3cret-key"})
        assert overlay.status_code == 200
    monkeypatch.delenv("HYBRIDCXR_API_KEY")
    with TestClient(make_app(api_key="given")) as http:
        assert post(http, phantom_dicom).status_code == 401


def test_api_key_holds_when_the_app_sits_under_a_prefix(make_app, phantom_dicom):
    with TestClient(make_app(api_key="k"), root_path="/api") as http:  # uvicorn --root-path, or a mount
        assert_error(post(http, phantom_dicom, path_prefix="/api"), 401, "unauthorized")


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_too_large_or_too_small_get_422_before_decoding(make_app, client, monkeypatch):
    from hybridcxr.serve import service

    decoded = []
    monkeypatch.setattr(service, "_decode", lambda path: decoded.append(path))
    with TestClient(make_app(max_pixels=1_000_000)) as http:
        big = _png(2000, 1500)  # a few KB of zeros that would decode to 3 million pixels
        assert len(big) < 50_000
        assert_error(post(http, "big.png", big, kind="image/png"), 422, "too_many_pixels", "2000 x 1500")
    assert_error(post(client, "tiny.png", _png(32, 40), kind="image/png"), 422, "not_a_radiograph", "too small")
    assert not decoded, "the header check runs before the decoder"


def test_uploads_over_the_limit_get_413(make_app, phantom_dicom):
    data = phantom_dicom.read_bytes()
    with TestClient(make_app(max_upload_bytes=1024)) as http:  # refused from Content-Length, before parsing
        assert_error(post(http, phantom_dicom), 413, "upload_too_large", "0.0009766 MiB")
    with TestClient(make_app(max_upload_bytes=len(data) - 1)) as http:  # within the multipart slack: counted
        assert_error(post(http, phantom_dicom), 413, "upload_too_large", "--max-upload-mb")
    with TestClient(make_app(max_upload_bytes=len(data))) as http:
        assert post(http, phantom_dicom).status_code == 200

    def chunked():  # no Content-Length: the body is counted as it arrives
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.dcm"\r\n\r\n'
        for start in range(0, len(data), 65536):
            yield data[start:start + 65536]
        yield b"\r\n--b--\r\n"

    with TestClient(make_app(max_upload_bytes=1024)) as http:
        multipart = {"Content-Type": "multipart/form-data; boundary=b"}
        streamed = http.post("/v1/analyze", content=chunked(), headers=multipart)
        assert "content-length" not in {k.lower() for k in streamed.request.headers}
        assert_error(streamed, 413, "upload_too_large")


def test_text_file_gets_415(client):
    body = assert_error(post(client, "notes.txt", b"Patient: Doe^Jane\n" * 20, kind="text/plain"), 415,
                        "unsupported_type", "DICOM", "PNG", "JPEG")
    assert "Doe" not in body["detail"] and "text/plain" not in body["detail"], "neither content nor header echoed"
    fake_png = post(client, "fake.png", b"GIF89a" + bytes(300), kind="image/png")  # the declared type is not believed
    assert_error(fake_png, 415, "unsupported_type")
    assert_error(post(client, "empty.dcm", b"", kind="application/dicom"), 422, "empty_upload", "empty")


def test_ct_dicom_gets_422(client, shared_data):
    assert_error(post(client, shared_data / UDACITY / "test5.dcm"), 422, "not_a_radiograph", "Modality CT")


def test_corrupt_files_get_422(client, phantom_dicom, shared_data):
    data = phantom_dicom.read_bytes()
    assert_error(post(client, "cut.dcm", data[: len(data) // 2]), 422, "undecodable")
    noise = post(client, "noise.dcm", data[:132] + bytes(range(256)) * 8)  # parses as elements, none of them pixels
    assert_error(noise, 422, ("undecodable", "not_a_radiograph"))
    png = (shared_data / NIH_PNG).read_bytes()
    assert_error(post(client, "cut.png", png[:5000], kind="image/png"), 422, "undecodable")


def test_bad_demographics_get_422(client, phantom_dicom):
    with pytest.warns(RadiographWarning, match="'old'"):
        assert_error(post(client, phantom_dicom, age="old"), 422, "bad_age", "'old'")
    assert_error(post(client, phantom_dicom, sex="X"), 422, "bad_sex", "M or F")


def test_no_patient_names_or_file_names_in_logs(client, phantom_dicom, tmp_path, caplog):
    ds = pydicom.dcmread(phantom_dicom)
    ds.PatientName = "Doe^Jane"
    named = tmp_path / "Doe_Jane_chest.dcm"
    ds.save_as(named)
    with caplog.at_level(logging.INFO, logger="hybridcxr.serve"):
        body = post(client, named).json()
        post(client, "Doe_Jane.txt", b"not an image", kind="text/plain")
    assert body["id"] in caplog.text and "bytes" in caplog.text
    assert "Doe" not in caplog.text and "Jane" not in caplog.text
    assert "Doe" not in str(body)


# -- liveness, docs, page, CLI ---------------------------------------------------------------------------------
def test_healthz_answers_while_an_analysis_runs(make_app, phantom_dicom, monkeypatch):
    app = make_app()
    analyzer = app.state.service.analyzer
    started, release = threading.Event(), threading.Event()
    original = analyzer.analyze

    def slow(*args, **kwargs):
        started.set()
        release.wait(timeout=60)
        return original(*args, **kwargs)

    monkeypatch.setattr(analyzer, "analyze", slow)
    answers: dict[str, object] = {}
    with TestClient(app) as http:  # one event loop for every request, as under uvicorn
        worker = threading.Thread(target=lambda: answers.setdefault("analyze", post(http, phantom_dicom)))
        worker.start()
        assert started.wait(timeout=60), "the analysis never reached the model"
        probe = threading.Thread(target=lambda: answers.setdefault("health", http.get("/healthz")))
        begin = time.perf_counter()
        probe.start()
        probe.join(timeout=10)
        waited = time.perf_counter() - begin
        release.set()
        worker.join(timeout=60)
    assert "health" in answers and waited < 10, "/healthz waited for the analysis: inference blocks the event loop"
    assert answers["health"].status_code == 200 and answers["health"].json()["busy"] is True
    assert answers["analyze"].status_code == 200


def test_docs_and_viewer_page(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/analyze", "/v1/overlay/{analysis_id}.png", "/healthz"} <= set(spec["paths"])
    assert {"413", "415", "422"} <= set(spec["paths"]["/v1/analyze"]["post"]["responses"])
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for marker in ('id="findings"', 'id="overlay"', 'id="file"', 'id="boxes"'):
        assert marker in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page loads nothing from elsewhere"
    assert "<link" not in html and "@import" not in html
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_sniffing_by_content():
    assert sniff_upload(bytes(128) + b"DICM" + bytes(8), "text/plain") == "dicom"
    assert sniff_upload(b"\xff\xd8\xff\xe0" + bytes(200), None) == "jpeg"
    assert sniff_upload(b"\x08\x00\x05\x00" + bytes(200), "application/dicom") == "dicom"  # no preamble: decode decides


def test_serve_command_refuses_a_folder_that_is_not_a_run(tmp_path):
    from typer.testing import CliRunner

    from hybridcxr.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--port", "1"])
    assert result.exit_code == 1 and "not a classifier run folder" in result.output
    bad = CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--max-upload-mb", "0"])
    assert bad.exit_code == 2

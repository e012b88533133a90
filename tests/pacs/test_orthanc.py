"""``hybridcxr pacs`` against a real Orthanc (``tests/_orthanc.py``): round trips over DICOMweb and DIMSE,
idempotency, the CT skipped, the Secondary Capture rendered, and the failures (credentials, refused store)."""

from __future__ import annotations

import io
import json
import urllib.error

import pydicom
import pytest
from _orthanc import CT_SAMPLE, REFUSED_PATIENT, SAMPLES, OrthancServer, relabelled
from typer.testing import CliRunner

from hybridcxr.cli import app
from hybridcxr.dicom_out.identity import is_ours, model_version
from hybridcxr.pacs.state import PacsState

pytestmark = pytest.mark.slow
runner = CliRunner()


def _upload_samples(orthanc: OrthancServer, shared, tmp_path) -> tuple[dict[str, tuple[str, str]], str]:
    """Upload the shared radiographs and a CT study; ({study UID: (Patient ID, Patient's Name)} of the
    radiographs, the CT's study UID)."""
    studies = {}
    for name in SAMPLES:
        path = shared / "dicom" / name
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        orthanc.upload(path)
        studies[str(ds.StudyInstanceUID)] = (str(ds.PatientID), str(ds.get("PatientName", "")))
    ct = relabelled(shared / "dicom" / CT_SAMPLE, tmp_path)
    orthanc.upload(ct)
    return studies, str(pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID)


def _target(orthanc: OrthancServer, protocol: str, password: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The command-line options and environment reaching ``orthanc`` over ``protocol``."""
    if protocol == "dicomweb":
        return (["--dicomweb", f"{orthanc.url}/dicom-web"],
                {"HYBRIDCXR_PACS_USER": orthanc.user, "HYBRIDCXR_PACS_PASSWORD": password or orthanc.password})
    return ["--dimse", f"{orthanc.dicom_host}:{orthanc.dicom_port}", "--aet", orthanc.our_aet,
            "--called-aet", orthanc.aet], {}


def _server(orthanc: OrthancServer, protocol: str) -> str:
    """The server as the state records it (no credentials)."""
    if protocol == "dicomweb":
        return f"{orthanc.url}/dicom-web"
    return f"{orthanc.dicom_host}:{orthanc.dicom_port} (AE {orthanc.aet})"


def _pacs(model, state, target, env, *more):
    result = runner.invoke(app, ["pacs", "--model", str(model), "--state", str(state), *target, *more], env=env)
    return result, " ".join(result.output.split())


def _ours_in(orthanc: OrthancServer, study_uid: str, model: str) -> dict[str, list[dict]]:
    """Our objects in a study, by modality, as Orthanc's simplified tags."""
    found: dict[str, list[dict]] = {}
    for series in orthanc.series_of(study_uid):
        for instance in series["Instances"]:
            tags = orthanc.tags(instance)
            if tags.get("Manufacturer") == "hybridcxr" and f"model {model}" in tags.get("SoftwareVersions", ""):
                found.setdefault(tags["Modality"], []).append({**tags, "_id": instance})
    return found


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_round_trip_stores_one_sr_per_radiograph_and_nothing_twice(orthanc, tiny_classifier, shared_data,
                                                                   tmp_path, protocol):
    _, run, _ = tiny_classifier
    model = model_version(run / "model" / "card.json")
    studies, ct_study = _upload_samples(orthanc, shared_data, tmp_path)
    target, env = _target(orthanc, protocol)
    result, text = _pacs(run, tmp_path / "s.sqlite", target, env, "--store", "sr,sc")
    assert result.exit_code == 3, result.output  # done; the CT series skipped
    assert f"{len(studies)} studies answered ({2 * len(studies)} objects stored)" in text
    assert f"study {ct_study} series" in text and "modality CT is not a projection radiograph" in text
    for study_uid, patient in studies.items():
        ours = _ours_in(orthanc, study_uid, model)
        captures = [t for m, items in ours.items() if m != "SR" for t in items]
        assert len(ours.get("SR", [])) == 1 and len(captures) == 1, ours.keys()
        sr = ours["SR"][0]
        assert sr["StudyInstanceUID"] == study_uid and (sr["PatientID"], sr.get("PatientName", "")) == patient
    assert not _ours_in(orthanc, ct_study, model)
    count = orthanc.count_instances()
    again, text = _pacs(run, tmp_path / "s.sqlite", target, env, "--store", "sr,sc")
    assert again.exit_code == 3 and "0 studies answered" in text and f"{len(studies)} already answered" in text
    fresh, text = _pacs(run, tmp_path / "fresh.sqlite", target, env)  # no local state: the SR in the study says
    assert fresh.exit_code == 3 and "0 studies answered" in text and f"{len(studies)} already answered" in text
    assert text.count("skipped: study") == 1  # the CT only: our own SR and SC series are passed over
    assert orthanc.count_instances() == count
    assert sorted(PacsState(tmp_path / "fresh.sqlite").done(_server(orthanc, protocol), model)) == sorted(studies)


def test_secondary_capture_renders_and_sr_is_listed(orthanc, tiny_classifier, shared_data, tmp_path):
    _, run, _ = tiny_classifier
    model = model_version(run / "model" / "card.json")
    path = shared_data / "dicom" / SAMPLES[-1]
    orthanc.upload(path)
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    target, env = _target(orthanc, "dicomweb")
    result, _ = _pacs(run, tmp_path / "s.sqlite", target, env, "--study", study_uid, "--store", "sr,sc")
    assert result.exit_code == 0, result.output
    ours = _ours_in(orthanc, study_uid, model)
    capture = [t for m, items in ours.items() if m != "SR" for t in items]
    assert len(capture) == 1 and len(ours["SR"]) == 1
    png = orthanc.request("GET", f"/instances/{capture[0]['_id']}/preview")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    study = orthanc.get_json(f"/studies/{_study_id(orthanc, study_uid)}")
    listed = [orthanc.get_json(f"/series/{s}")["MainDicomTags"].get("Modality") for s in study["Series"]]
    assert sorted(listed) == sorted(["CR", "SR", capture[0]["Modality"]])
    sr = pydicom.dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{ours['SR'][0]['_id']}/file")))
    assert is_ours(sr, model) and sr.PatientID == pydicom.dcmread(path, stop_before_pixels=True).PatientID


def _study_id(orthanc: OrthancServer, study_uid: str) -> str:
    body = json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).encode()
    return json.loads(orthanc.request("POST", "/tools/find", body))[0]


def test_wrong_credentials_are_a_clear_error(orthanc, tiny_classifier, shared_data, tmp_path):
    _, run, _ = tiny_classifier
    orthanc.upload(shared_data / "dicom" / SAMPLES[0])
    target, env = _target(orthanc, "dicomweb", password="not-the-password")
    result, text = _pacs(run, tmp_path / "s.sqlite", target, env)
    assert result.exit_code == 1, result.output
    assert "refused our credentials (HTTP 401)" in text
    assert "not-the-password" not in result.output and orthanc.password not in result.output
    with pytest.raises(urllib.error.HTTPError):
        OrthancServer(orthanc.url, orthanc.user, "not-the-password", "", 0).request("GET", "/system")


def test_a_bearer_token_the_pacs_refuses_is_a_clear_error_and_never_shown(orthanc, tiny_classifier, tmp_path):
    _, run, _ = tiny_classifier
    result, text = _pacs(run, tmp_path / "s.sqlite", ["--dicomweb", f"{orthanc.url}/dicom-web"],
                         {"HYBRIDCXR_PACS_TOKEN": "tok-3f9a-never-shown"})
    assert result.exit_code == 1 and "refused our credentials (HTTP 401)" in text, result.output
    assert "tok-3f9a-never-shown" not in result.output


def test_unknown_ae_title_is_a_clear_error(orthanc, tiny_classifier, tmp_path):
    _, run, _ = tiny_classifier
    target, env = _target(orthanc, "dimse")
    target[target.index("--aet") + 1] = "STRANGER"
    result, text = _pacs(run, tmp_path / "s.sqlite", target, env)
    assert result.exit_code == 1 and "rejected the association" in text, result.output


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_refused_store_fails_the_study_and_leaves_it_to_answer(orthanc, tiny_classifier, shared_data, tmp_path,
                                                                protocol):
    _, run, _ = tiny_classifier
    model = model_version(run / "model" / "card.json")
    refused = relabelled(shared_data / "dicom" / SAMPLES[0], tmp_path, PatientID=REFUSED_PATIENT)
    orthanc.upload(refused)
    study_uid = str(pydicom.dcmread(refused, stop_before_pixels=True).StudyInstanceUID)
    target, env = _target(orthanc, protocol)
    state = tmp_path / "s.sqlite"
    result, text = _pacs(run, state, target, env)
    assert result.exit_code == 1, result.output
    assert f"failed: study {study_uid}" in text and "not in the PACS afterwards" in text
    assert not _ours_in(orthanc, study_uid, model)
    assert PacsState(state).done(_server(orthanc, protocol), model) == []
    assert PacsState(state).last_run(_server(orthanc, protocol), model) is None  # --since last looks again
    again, text = _pacs(run, state, target, env)  # tried again, not "already answered"
    assert again.exit_code == 1 and "0 already answered" in text


def test_watch_polls_and_then_looks_only_since_the_last_run(orthanc, tiny_classifier, shared_data, tmp_path):
    _, run, _ = tiny_classifier
    orthanc.upload(shared_data / "dicom" / SAMPLES[0])
    target, env = _target(orthanc, "dicomweb")
    result, text = _pacs(run, tmp_path / "s.sqlite", target, env, "--watch", "--interval", "0", "--passes", "2")
    assert result.exit_code == 0, result.output
    first, second = [line for line in result.output.splitlines() if line.startswith("PACS ")]
    assert "1 studies answered (1 objects stored)" in first
    assert "0 studies answered" in second and "0 already answered" in second  # its Study Date is before today


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_since_selects_studies_by_study_date(orthanc, tiny_classifier, shared_data, tmp_path, protocol):
    _, run, _ = tiny_classifier
    orthanc.upload(shared_data / "dicom" / SAMPLES[0])  # no Study Date
    orthanc.upload(shared_data / "dicom" / SAMPLES[-1])  # Study Date 19010101
    target, env = _target(orthanc, protocol)
    later, text = _pacs(run, tmp_path / "s.sqlite", target, env, "--since", "1901-01-02")
    assert later.exit_code == 0 and "0 studies answered" in text and "0 already answered" in text, later.output
    from_then, text = _pacs(run, tmp_path / "s.sqlite", target, env, "--since", "19010101")
    assert from_then.exit_code == 0 and "1 studies answered (1 objects stored)" in text, from_then.output


def test_dimse_finds_our_sr_where_c_find_does_not_answer_software_versions(tiny_classifier, shared_data, tmp_path):
    """A PACS answering C-FIND from its index only (Orthanc with StorageAccessOnFind "Never") says no Software
    Versions: the SR series is fetched (C-GET) and read instead, so a fresh state still stores nothing twice."""
    from _orthanc import dicomweb_plugin, orthanc_binary, start, stop
    from _services import missing_service

    from hybridcxr.pacs.dimse import DimsePacs, _identifier

    if orthanc_binary() is None or dicomweb_plugin() is None:
        missing_service("Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)")
    _, run, _ = tiny_classifier
    model = model_version(run / "model" / "card.json")
    server, process = start(tmp_path / "orthanc", StorageAccessOnFind="Never")
    try:
        server.upload(shared_data / "dicom" / SAMPLES[0])
        target, env = _target(server, "dimse")
        first, text = _pacs(run, tmp_path / "a.sqlite", target, env)
        assert first.exit_code == 0 and "1 studies answered" in text, first.output
        study_uid = str(pydicom.dcmread(shared_data / "dicom" / SAMPLES[0], stop_before_pixels=True).StudyInstanceUID)
        pacs = DimsePacs(server.dicom_host, server.dicom_port, aet=server.our_aet, called_aet=server.aet)
        sr = next(s for s in pacs.series(study_uid) if s.modality == "SR")
        answers = pacs._find("check", _identifier("IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=sr.uid,
                                                  SOPInstanceUID="", SoftwareVersions=""))
        assert answers and not any(a.get("SoftwareVersions") for a in answers)  # the index does not say
        count = server.count_instances()
        again, text = _pacs(run, tmp_path / "b.sqlite", target, env)  # a fresh state
        assert again.exit_code == 0 and "1 already answered" in text, again.output
        assert server.count_instances() == count and pacs.answered(study_uid, model)
        assert not pacs.answered(study_uid, "0000000000000000")
    finally:
        stop(process)

"""A throwaway Orthanc for the PACS tests: its configuration, starting and stopping it, and the test fixture's source.

One place writes the configuration, for both ``.ci/run`` (which runs ``python3 tests/_orthanc.py start DIR`` with
the system Python: this module needs the standard library only) and the tests (which start one themselves
outside CI when Debian's ``Orthanc`` binary is there and ``HYBRIDCXR_TEST_ORTHANC_URL`` is not set).

The server: HTTP with basic authentication (one registered user) and remote access off, the DICOMweb plugin,
a DICOM port that answers only our AE title from 127.0.0.1 (C-FIND, C-GET, C-STORE), and a Lua filter that
refuses any Structured Report whose PatientID is :data:`REFUSED_PATIENT` (a real refused store, for the tests).

Environment given to the tests (``start`` prints these as ``export`` lines):
``HYBRIDCXR_TEST_ORTHANC_URL`` (``http://127.0.0.1:PORT``), ``..._USER``, ``..._PASSWORD``,
``..._DICOM`` (``127.0.0.1:PORT``), ``..._AET`` (Orthanc's), ``..._OUR_AET``, ``..._OUR_PORT`` (our C-MOVE port).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
ORTHANC_AET = "ORTHANC"
OUR_AET = "HYBRIDCXR"
USER = "hybridcxr"
REFUSED_PATIENT = "HYBRIDCXR-REFUSE-SR"
"""Orthanc's Lua filter refuses every SR of this patient: how the tests get a store the PACS rejects."""

_FILTER = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.Modality == 'SR' and dicom.PatientID == '{REFUSED_PATIENT}' then
    return false
  end
  return true
end
"""


@dataclass(frozen=True)
class OrthancServer:
    """Where a running test Orthanc answers, and the credentials it wants."""

    url: str
    user: str
    password: str
    dicom_host: str
    dicom_port: int
    aet: str = ORTHANC_AET
    our_aet: str = OUR_AET
    our_port: int = 0

    def env(self) -> dict[str, str]:
        """The environment variables the tests read the server from."""
        return {"HYBRIDCXR_TEST_ORTHANC_URL": self.url, "HYBRIDCXR_TEST_ORTHANC_USER": self.user,
                "HYBRIDCXR_TEST_ORTHANC_PASSWORD": self.password,
                "HYBRIDCXR_TEST_ORTHANC_DICOM": f"{self.dicom_host}:{self.dicom_port}",
                "HYBRIDCXR_TEST_ORTHANC_AET": self.aet, "HYBRIDCXR_TEST_ORTHANC_OUR_AET": self.our_aet,
                "HYBRIDCXR_TEST_ORTHANC_OUR_PORT": str(self.our_port)}

    @classmethod
    def from_env(cls) -> OrthancServer | None:
        """The server ``.ci/run`` started, from the environment; None when ``HYBRIDCXR_TEST_ORTHANC_URL`` is unset."""
        env = os.environ
        if not env.get("HYBRIDCXR_TEST_ORTHANC_URL"):
            return None
        host, _, port = env.get("HYBRIDCXR_TEST_ORTHANC_DICOM", "127.0.0.1:0").rpartition(":")
        return cls(env["HYBRIDCXR_TEST_ORTHANC_URL"], env.get("HYBRIDCXR_TEST_ORTHANC_USER", USER),
                   env.get("HYBRIDCXR_TEST_ORTHANC_PASSWORD", ""), host, int(port),
                   env.get("HYBRIDCXR_TEST_ORTHANC_AET", ORTHANC_AET), env.get("HYBRIDCXR_TEST_ORTHANC_OUR_AET", OUR_AET),
                   int(env.get("HYBRIDCXR_TEST_ORTHANC_OUR_PORT", "0")))

    def request(self, method: str, path: str, body: bytes | None = None, *, content_type: str = "application/json",
                timeout: float = 30) -> bytes:
        """One authenticated call to Orthanc's REST API; raises urllib's HTTPError on an error status."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req = urllib.request.Request(self.url.rstrip("/") + path, data=body, method=method,
                                     headers={"Authorization": f"Basic {token}", "Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read()

    def get_json(self, path: str) -> object:
        """A REST GET's JSON answer."""
        return json.loads(self.request("GET", path))

    def upload(self, path: Path) -> dict:
        """Store one DICOM file through the REST API (``POST /instances``); Orthanc's answer."""
        return json.loads(self.request("POST", "/instances", path.read_bytes(), content_type="application/dicom"))

    def series_of(self, study_uid: str) -> list[dict]:
        """Orthanc's view of a study's series (``MainDicomTags``, ``Instances``), by Study Instance UID."""
        body = json.dumps({"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}).encode()
        return json.loads(self.request("POST", "/tools/find", body))

    def tags(self, instance: str) -> dict:
        """An instance's tags by name (Orthanc's ``simplified-tags``)."""
        return self.get_json(f"/instances/{instance}/simplified-tags")  # type: ignore[return-value]

    def count_instances(self) -> int:
        """How many instances Orthanc holds."""
        return int(self.get_json("/statistics")["CountInstances"])  # type: ignore[index]

    def clear(self) -> None:
        """Delete every patient, so that each test starts from an empty PACS."""
        for patient in self.get_json("/patients"):  # type: ignore[union-attr]
            self.request("DELETE", f"/patients/{patient}")


SAMPLES = ("nih-udacity/test1.dcm", "nih-udacity/test2.dcm", "nih-udacity/test3.dcm",
           "siim-acr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
"""The shared radiographs with distinct UIDs (test4-6 and Fake_MONOHR1 reuse test1's and the SIIM file's)."""
CT_SAMPLE = "nih-udacity/test5.dcm"
"""Its Modality is CT; uploaded with fresh UIDs as a study of its own (it shares test1's UIDs otherwise)."""


def relabelled(source: Path, folder: Path, **elements: str) -> Path:
    """A copy of a DICOM file with fresh Study/Series/SOP Instance UIDs and ``elements`` set (pydicom names)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in elements.items():
        setattr(ds, key, value)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_binary() -> str | None:
    """Debian's ``Orthanc`` executable, or None."""
    return shutil.which("Orthanc") or shutil.which("orthanc")


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin's shared library (Debian's ``orthanc-dicomweb``), or None."""
    for folder in PLUGIN_DIRS:
        found = sorted(Path(folder).glob("libOrthancDicomWeb.so*"))
        if found:
            return str(found[0])
    return None


def write_config(folder: Path, plugin: str, **overrides: object) -> OrthancServer:
    """Write ``folder/orthanc.json`` (and the Lua filter) for a fresh server on free ports; ``overrides`` replace
    top-level settings (e.g. ``StorageAccessOnFind="Never"``)."""
    http_port, dicom_port, our_port = free_port(), free_port(), free_port()
    server = OrthancServer(f"http://127.0.0.1:{http_port}", USER, secrets.token_hex(12), "127.0.0.1", dicom_port,
                           our_port=our_port)
    (folder / "filter.lua").write_text(_FILTER)
    config = {
        "Name": "hybridcxr-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "StorageCompression": False, "Plugins": [plugin], "LuaScripts": [str(folder / "filter.lua")],
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: server.password},
        "OrthancExplorerEnabled": False, "WebDavEnabled": False, "HttpDescribeErrors": True,
        "DicomServerEnabled": True, "DicomAet": ORTHANC_AET, "DicomPort": dicom_port, "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False, "DicomAlwaysAllowMove": False, "DicomCheckModalityHost": True,
        "DicomModalities": {OUR_AET: {"AET": OUR_AET, "Host": "127.0.0.1", "Port": our_port}},
        "StorageAccessOnFind": "Always", "ConcurrentJobs": 2,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": f"127.0.0.1:{http_port}",
                     "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    config.update(overrides)
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    return server


def wait_ready(server: OrthancServer, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait until Orthanc answers ``/system`` (and its DICOMweb root); RuntimeError with its log if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            server.request("GET", "/system", timeout=2)
            server.request("GET", "/dicom-web/studies", timeout=5)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"Orthanc did not answer within {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def start(folder: Path, **overrides: object) -> tuple[OrthancServer, subprocess.Popen]:
    """Start a throwaway Orthanc with its storage and log in ``folder`` (settings ``overrides`` as for
    :func:`write_config`); raises RuntimeError where it cannot."""
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary is None or plugin is None:
        raise RuntimeError("Orthanc or its DICOMweb plugin is not installed (Debian: orthanc, orthanc-dicomweb)")
    folder.mkdir(parents=True, exist_ok=True)
    server = write_config(folder, plugin, **overrides)
    log = folder / "orthanc.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=sink, stderr=subprocess.STDOUT,
                                   cwd=folder, start_new_session=True)
    wait_ready(server, process, log)
    return server, process


def stop(process: subprocess.Popen) -> None:
    """Stop Orthanc (SIGTERM, then SIGKILL after 10 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _main(argv: list[str]) -> int:
    """``start DIR``: start Orthanc in the background, print ``export`` lines and ``ORTHANC_PID=...``."""
    if len(argv) != 2 or argv[0] != "start":
        print("usage: python3 tests/_orthanc.py start DIR", file=sys.stderr)
        return 2
    try:
        server, process = start(Path(argv[1]))
    except RuntimeError as err:
        print(f"ci: {err}", file=sys.stderr)
        return 1
    for key, value in server.env().items():
        print(f"export {key}={value}")
    print(f"ORTHANC_PID={process.pid}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

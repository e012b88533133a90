"""The Orthanc the PACS tests talk to: the one ``.ci/run`` started, else (outside CI) one started here."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from _orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, start, stop
from _services import missing_service


@pytest.fixture(scope="session")
def orthanc_session(tmp_path_factory) -> Iterator[OrthancServer]:
    """The test Orthanc for the session; skip-or-fail (``missing_service``) where there is none.

    Under CI the server must come from ``.ci/run`` (``HYBRIDCXR_TEST_ORTHANC_URL``); elsewhere, without that
    variable, a throwaway Orthanc is started when Debian's ``orthanc`` and ``orthanc-dicomweb`` are installed.
    """
    server = OrthancServer.from_env()
    if server is not None:
        yield server
        return
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        missing_service("HYBRIDCXR_TEST_ORTHANC_URL is not set: .ci/run starts the test Orthanc and sets it")
    if orthanc_binary() is None or dicomweb_plugin() is None:
        missing_service("Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb) and "
                        "HYBRIDCXR_TEST_ORTHANC_URL is not set")
    try:
        server, process = start(tmp_path_factory.mktemp("orthanc"))
    except RuntimeError as err:
        missing_service(f"the test Orthanc did not start: {err}")
    try:
        yield server
    finally:
        stop(process)


@pytest.fixture
def orthanc(orthanc_session: OrthancServer) -> OrthancServer:
    """The test Orthanc, emptied: every test starts from a PACS holding nothing."""
    orthanc_session.clear()
    return orthanc_session

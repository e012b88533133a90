"""guarded_warnings: blocks entered by several threads nest, so no thread's warning is lost to another's block."""

from __future__ import annotations

import threading
import time
import warnings

from hybridcxr.errors import guarded_warnings


def test_warnings_survive_blocks_entered_by_other_threads():
    stop = threading.Event()

    def decoder() -> None:  # as the detector's decoder threads do while reading DICOMs
        while not stop.is_set():
            with guarded_warnings("always", record=True) as caught:
                time.sleep(0.0002)  # a DICOM being read
            for record in caught:  # the readers re-emit what they caught
                warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)

    threads = [threading.Thread(target=decoder) for _ in range(2)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for t in threads:
            t.start()
        try:
            for i in range(300):
                with guarded_warnings("ignore"):  # as the writers do in the main thread
                    time.sleep(0.0002)
                warnings.warn(f"main {i}", UserWarning, stacklevel=1)
        finally:
            stop.set()
            for t in threads:
                t.join()
    got = {str(w.message) for w in seen}
    assert {f"main {i}" for i in range(300)} <= got, f"{300 - len(got)} warnings lost"

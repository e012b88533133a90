"""Lung masks back into PACS: a DICOM Segmentation (highdicom) filed in the source radiograph's study.

The Segmentation is BINARY with one segment per lung found (1 "Right lung", SCT 3341006; 2 "Left lung",
SCT 44029006; the patient's sides), made by an automatic algorithm named "hybridcxr lungs". highdicom takes
the patient and study from the source, so the SEG carries the source's Study Instance UID, a new Series and SOP
Instance UID, and references the source's SOP Instance (Referenced Series and Source Image Sequences), which
is how a viewer lays the lungs over the right image.

What is copied from the source header: its UIDs, Patient ID (PACS match the study on it), sex, age and the
study's date, time, id and accession number. Patient Name and Birth Date are written empty (our outputs keep
no names or birth dates); empty Type 2 attributes the source lacks are added empty, not invented. The source's
Pixel Spacing is not repeated: highdicom 0.28 writes it into a Pixel Measures item without the Slice Thickness
its own reader requires (a projection radiograph has none); the mask is in the source's pixel frame, which the
reference names. Only DICOM sources can have a Segmentation: a PNG or JPEG has no study to file it in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybridcxr import __version__
from hybridcxr.errors import InputError
from hybridcxr.files import atomic_path

SERIES_NUMBER = 9002
"""Series Number of the lung segmentation series (after the acquired ones, beside the overlays' 9001)."""
SEGMENTS = (("Right lung", "3341006"), ("Left lung", "44029006"))
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _source_header(path: str | Path):
    """The source's header as highdicom needs it (see the module doc for what is blanked and dropped)."""
    from hybridcxr.io.dicom import load_dataset

    ds = load_dataset(path, header_only=True, force=True)
    if not getattr(ds, "StudyInstanceUID", None) or not getattr(ds, "SOPInstanceUID", None):
        raise InputError(path, "the source has no Study or SOP Instance UID: a Segmentation could not reference it")
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.PatientName, ds.PatientBirthDate = "", ""
    if "PixelSpacing" in ds:
        del ds.PixelSpacing
    return ds


def export_segmentation(right: np.ndarray, left: np.ndarray, source_path: str | Path, path: str | Path) -> Path:
    """Write the lungs of ``source_path`` (a DICOM radiograph; boolean masks of its size, patient's right and
    left) as a DICOM Segmentation at ``path`` (atomically); return the path.

    Raises InputError naming the source when it is not a DICOM that can be referenced, when the masks are not
    its size, or when both masks are empty.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = _source_header(source_path)
    shape = (int(source.Rows), int(source.Columns))
    if right.shape != shape or left.shape != shape:
        raise InputError(source_path, f"masks {right.shape} do not match the image's {shape}")
    present = [(i, m) for i, m in enumerate((right, left)) if m.any()]
    if not present:
        raise InputError(source_path, "no lung was found: there is nothing to segment")
    algorithm = hd.AlgorithmIdentificationSequence(name="hybridcxr lungs", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n + 1, segment_label=SEGMENTS[i][0],
            segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
            segmented_property_type=hd.sr.CodedConcept(SEGMENTS[i][1], "SCT", SEGMENTS[i][0]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for n, (i, _) in enumerate(present)]
    pixels = np.stack([m.astype(np.uint8) for _, m in present], axis=-1)[None]
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="hybridcxr",
        manufacturer_model_name=f"hybridcxr {__version__}", software_versions=__version__,
        device_serial_number="none", series_description="hybridcxr lung fields")
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)

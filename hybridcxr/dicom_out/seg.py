"""Lung masks back into PACS: a DICOM Segmentation (highdicom) filed in the source radiograph's study.

The Segmentation is BINARY with one segment per lung found (1 "Right lung", SCT 3341006; 2 "Left lung",
SCT 44029006; the patient's sides), made by an automatic algorithm named "hybridcxr lungs". It carries the
source's patient and study modules as the source has them (:mod:`hybridcxr.dicom_out.study`), a new Series
and SOP Instance UID, and references the source's SOP Instance (Referenced Series and Source Image
Sequences), which is how a viewer lays the lungs over the right image. Patient Orientation is the source's
(present and empty where the source has none).

The source's Pixel Spacing is not repeated: highdicom 0.28 writes it into a Pixel Measures item without the
Slice Thickness its own reader requires (a projection radiograph has none); the mask is in the source's pixel
frame, which the reference names. Only DICOM sources can have a Segmentation: a PNG or JPEG has no study to
file it in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from hybridcxr import __version__
from hybridcxr.dicom_out.identity import MANUFACTURER
from hybridcxr.dicom_out.study import join_study, new_series, read_source, require_instance, save, without_patient
from hybridcxr.errors import InputError

SERIES_NUMBER = 9002
"""Series Number of the lung segmentation series (after the acquired ones, beside the overlays' 9001)."""
SERIES_DESCRIPTION = "hybridcxr lung fields"
SEGMENTS = (("Right lung", "3341006"), ("Left lung", "44029006"))


def export_segmentation(right: np.ndarray, left: np.ndarray, source_path: str | Path, path: str | Path, *,
                        model: str | None = None) -> Path:
    """Write the lungs of ``source_path`` (a DICOM radiograph; boolean masks of its size, patient's right and
    left) as a DICOM Segmentation at ``path`` (atomically); return the path.

    ``model`` is the lung model's version for Software Versions (the package version alone where not given).
    Raises InputError naming the source when it is not a DICOM that can be referenced, when the masks are not
    its size, or when both masks are empty.
    """
    source = read_source(source_path)
    require_instance(source, source_path, "a Segmentation")
    return save(segmentation(right, left, source, source_path, model=model), path)


def segmentation(right: np.ndarray, left: np.ndarray, source: Dataset, source_path: str | Path, *,
                 model: str | None = None) -> Dataset:
    """The SEG dataset of the two lung masks over ``source`` (its header); see :func:`export_segmentation`."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

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
    header = without_patient(source)
    if "PixelSpacing" in header:
        del header.PixelSpacing
    seg = hd.seg.Segmentation(
        source_images=[header], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=f"hybridcxr {__version__}", software_versions=__version__,
        device_serial_number="none", series_description=SERIES_DESCRIPTION)
    join_study(seg, source)
    new_series(seg, SERIES_DESCRIPTION, SERIES_NUMBER, model=model, source=source)
    if "BodyPartExamined" not in seg:  # dciodvfy's SEG condition rejects an empty Laterality (an SC wants one)
        del seg.Laterality
    seg.PatientOrientation = source.get("PatientOrientation") or None  # Type 2C: the source's, else empty
    return seg

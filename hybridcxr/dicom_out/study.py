"""Filing our objects in the source's study: the one place that copies patient and study modules from a source.

Why: a PACS files an object by its Study Instance UID and shows it under the patient its Patient module names;
a viewer lists series by number and description. Every object hybridcxr writes (SR, Secondary Capture,
Segmentation) therefore carries, copied from the source header **as the source has them**:

- the Patient module (name, id and issuer, birth date, sex, other ids, de-identification flags) and the
  Patient Study module's age, size and weight;
- the General Study module: Study Instance UID, Date, Time, ID, Accession Number, Referring Physician, Study
  Description.

Nothing is invented: a Type 2 attribute the source lacks is written empty, any other it lacks is left out.
Nothing copied here is logged or put in an error message (those name the file only). Then each object starts
a new series of its own (new Series Instance UID, a fixed Series Number and a clear Series Description) and
says who made it (:mod:`hybridcxr.dicom_out.identity`: Manufacturer and Software Versions). Where the
source is a chest, Body Part Examined is CHEST and Laterality is absent: Laterality is Type 2C, "required if
the body part examined is a paired structure" (PS3.3 C.7.3.1), and dciodvfy rejects it present, even empty,
beside CHEST. Where the body part is not known to be the chest, none is claimed and Laterality is present
and empty (unknown), as the condition then asks.

>>> source = read_source("study/IM0001.dcm")  # doctest: +SKIP
>>> join_study(dataset, source)  # doctest: +SKIP
>>> new_series(dataset, "hybridcxr findings (SR)", 9003, model="0123456789abcdef", source=source)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

from pydicom.dataset import Dataset

from hybridcxr import __version__
from hybridcxr.dicom_out.identity import MANUFACTURER, software_versions
from hybridcxr.errors import InputError, guarded_warnings
from hybridcxr.files import atomic_path

PATIENT_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence", "PatientAge", "PatientSize",
    "PatientWeight",
)
"""Patient module and Patient Study module attributes copied from the source where it has them."""
STUDY_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "ReferringPhysicianName", "StudyDescription",
)
"""General Study module attributes copied from the source where it has them."""
TYPE2_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName",
)
"""Type 2 attributes: present in every object we write, empty where the source has no value."""
CHEST = "CHEST"
_PIXEL_KEYWORDS = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})
_AGE_STRING = re.compile(r"^[0-9]{3}[DWMY]$")
_CHEST_WORDS = frozenset({"CHEST", "THORAX", "TORAX", "TORACE", "LUNG", "LUNGS", "CXR"})


def read_source(path: str | Path) -> Dataset:
    """The source radiograph's header (all of it, no pixels), as the writers here take it.

    Raises InputError naming the file where it is not a DICOM (a PNG or JPEG has no study to join).
    """
    from hybridcxr.io.dicom import read_header

    return read_header(path)


def require_instance(source: Dataset, path: str | Path, what: str) -> None:
    """Raise InputError naming ``path`` unless ``source`` has the Study, SOP Class and SOP Instance UIDs that
    ``what`` (e.g. "a Structured Report") must reference."""
    missing = [k for k in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID") if not str(source.get(k, "") or "")]
    if missing:
        raise InputError(path, f"the source has no {', '.join(missing)} (not a DICOM instance): {what} "
                               "could not reference it")


def join_study(ds: Dataset, source: Dataset) -> Dataset:
    """Give ``ds`` the source's patient and study attributes, exactly as the source has them; return ``ds``.

    What a library constructor put there first is replaced or removed, so ``ds`` says no more than the source.
    The one value rewritten is Patient's Age: a source's ``62`` (not a DICOM Age String) is written ``062Y``,
    the same age in the form the standard requires, and an age that cannot be read is left out.
    """
    for keyword in (*PATIENT_KEYWORDS, *STUDY_KEYWORDS):
        if keyword == "PatientAge":
            _copy_age(ds, source)
        elif keyword in source and not source[keyword].is_empty:
            # the element itself, not its value: setattr would validate the value and warn quoting it
            ds[source[keyword].tag] = copy.deepcopy(source[keyword])
        elif keyword in TYPE2_KEYWORDS:
            setattr(ds, keyword, None)
        elif keyword in ds:
            delattr(ds, keyword)
    return ds


def _copy_age(ds: Dataset, source: Dataset) -> None:
    """Patient's Age as a valid Age String (``081Y``), or absent where the source has none that parses."""
    from hybridcxr.io.demographics import parse_age

    raw = str(source.get("PatientAge", "") or "").strip()
    if _AGE_STRING.match(raw):
        age: str | None = raw
    else:
        with guarded_warnings("ignore"):  # the reader warned about this header, naming the file, already
            age = dicom_age(parse_age(raw)) if raw else None
    if age is not None:
        ds.PatientAge = age
    elif "PatientAge" in ds:
        del ds.PatientAge


def without_patient(source: Dataset) -> Dataset:
    """A copy of the source header without the Patient module's values, to hand to a library constructor:
    highdicom checks (and warns, quoting them) the names it is given; :func:`join_study` copies them
    afterwards. Type 2 attributes are present (empty where unknown), as highdicom expects."""
    clean = Dataset()
    for element in source:  # a new dataset: the source itself is never changed
        if element.keyword not in PATIENT_KEYWORDS and element.keyword not in _PIXEL_KEYWORDS:
            clean.add(element)
    for keyword in TYPE2_KEYWORDS:
        if keyword not in clean:
            setattr(clean, keyword, None)
    return clean


def dicom_age(age_years: float | None) -> str | None:
    """An age in years as a DICOM Age String: ``"081Y"``; ``"011M"``, ``"020D"`` under a year.

    >>> dicom_age(81.4), dicom_age(0.5), dicom_age(None)
    ('081Y', '006M', None)
    """
    if age_years is None or not math.isfinite(age_years) or age_years < 0:
        return None
    if age_years >= 1:
        return f"{min(int(age_years), 999):03d}Y"
    if age_years * 12 >= 1:
        return f"{int(age_years * 12):03d}M"
    return f"{int(age_years * 365.25):03d}D"


def new_series(ds: Dataset, description: str, number: int, *, model: str | None, source: Dataset | None = None,
               anatomy: bool = True) -> Dataset:
    """Mark ``ds`` as a series of ours: description, number, Manufacturer and Software Versions (the package
    version alone where ``model`` is None); with ``anatomy`` (objects with a General Series module), Body Part
    Examined CHEST where ``source`` is a chest, else an empty Laterality (see the module doc). Return ``ds``."""
    if len(description) > 64:
        raise ValueError(f"a Series Description has 64 characters at most; got {len(description)}")
    ds.SeriesDescription = description
    ds.SeriesNumber = number
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = software_versions(model) if model else [f"hybridcxr {__version__}"]
    if anatomy:
        _anatomy(ds, source)
    return ds


def _anatomy(ds: Dataset, source: Dataset | None) -> None:
    """Body Part Examined CHEST for a chest source, and Laterality as its Type 2C condition wants it."""
    if source is not None and is_chest(source):
        ds.BodyPartExamined = CHEST
        if "Laterality" in ds:  # the chest is not a paired part: a 2C Laterality must then be absent
            del ds.Laterality
        return
    if "BodyPartExamined" in ds:  # not known to be a chest: no body part is claimed
        del ds.BodyPartExamined
    ds.Laterality = None  # the body part may be paired: present and empty, i.e. unknown


def is_chest(source: Dataset) -> bool:
    """Whether the source's Body Part Examined names the chest (``CHEST``, ``THORAX``, ``PORTABLE CHEST``...)."""
    part = str(source.get("BodyPartExamined", "") or "").upper()
    return bool(set(re.split(r"[^A-Z]+", part)) & _CHEST_WORDS)


def save(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM file (preamble and file meta) at ``path``, atomically; return the path."""
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)

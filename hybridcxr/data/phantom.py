"""Synthetic chest radiographs ("phantoms") written as DICOM files in the VinDr-CXR PhysioNet layout.

Why: the whole pipeline (detector, fusion classifier, tuning, reports) must run on a fresh machine with no
downloads and no patient data. The phantoms are drawn, not scanned, and every file says so in its header
(``ImageComments``, ``SeriesDescription``, ``PatientName`` ``PHANTOM^<n>``, ``Manufacturer``).

Layout written under ``out`` (as PhysioNet's ``vindr-cxr/1.0.0``)::

    train/<image_id>.dicom   test/<image_id>.dicom
    annotations/annotations_{train,test}.csv    image_id,rad_id,class_name,x_min,y_min,x_max,y_max
    annotations/image_labels_{train,test}.csv   image_id,rad_id, 28 label columns (0/1)
    README.txt

Each image: a PA chest radiograph (body outline, dark lungs, heart and mediastinum, spine, ribs, clavicles,
diaphragm domes, gastric bubble, vessel markings, exposure gradient and noise) at 12 bits, about 10% stored
MONOCHROME1. Findings (:data:`PHANTOM_FINDINGS`) with their true boxes in original pixels:

- ``Nodule/Mass``: 1-2 bright round (masses: lobulated) blobs in a lung, radius 2-6% of the width;
- ``Pleural effusion``: fluid filling a lung base up to a meniscus, left, right or both (one box per side);
- ``Cardiomegaly``: heart widened to a cardiothoracic ratio of 0.56-0.68 (normal 0.38-0.49); box on the heart;
- ``Consolidation``: a patchy opacity with air-bronchogram-like lines in one lung zone;
- ``Pneumothorax``: an apico-lateral rim without lung markings, bounded by a thin visceral pleural line.

About 30% of images are normal; the others carry each finding with a probability of about a third, so each
finding's prevalence is 20-30%. Demographics are correlated with findings: the odds of cardiomegaly and of
effusion grow by 4% per year of age over 55, the odds of a nodule are 1.6 times higher in men. About 15% of
patients have two images (months apart, findings mostly persisting, same split); the patient id lives only
in the DICOM header (``PatientID``), as in VinDr. Ages are ``NNNY`` for nearly all (18-90), a few in months
(``NNNM``) and a few empty; a few sexes are empty.

Readers: each training image has readers ``R1``, ``R2``, ``R3``, who each draw every true box with
independent jitter (sd 4% of the box size) and now and then (5-10%, mostly subtle findings) miss one; each
test image has one consensus reader (:data:`TEST_READER`) with tight boxes and no misses. Image-level labels
follow each reader's boxes; the global ``Pneumonia`` goes with a consolidation and ``Lung tumor`` with a
mass of radius >= 5% of the width. As in PhysioNet, the test label table names its disease column
``Other disease`` where the training one says ``Other diseases``.

Everything is deterministic for a given ``seed`` (image ids, UIDs, pixels, tables).

>>> summary = make_phantom_dataset("/tmp/phantoms", n=20, size=(320, 288))  # doctest: +SKIP
>>> summary.n_train + summary.n_test  # doctest: +SKIP
20
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.special import expit

from hybridcxr.errors import InputError
from hybridcxr.files import atomic_path, write_text
from hybridcxr.findings import NO_FINDING, VINDR_CXR
from hybridcxr.progress import progress_bar

#: The findings a phantom can carry (a subset of VINDR_CXR).
PHANTOM_FINDINGS: tuple[str, ...] = (
    "Nodule/Mass", "Pleural effusion", "Cardiomegaly", "Consolidation", "Pneumothorax",
)
assert set(PHANTOM_FINDINGS) <= set(VINDR_CXR)

#: PhysioNet VinDr-CXR image-level label columns of ``image_labels_train.csv``, in file order.
IMAGE_LABEL_COLUMNS: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening",
    "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia",
    "Tuberculosis", "Other diseases", NO_FINDING,
)
#: The same for ``image_labels_test.csv``: PhysioNet spells one column ``Other disease`` there.
IMAGE_LABEL_COLUMNS_TEST: tuple[str, ...] = tuple(
    "Other disease" if c == "Other diseases" else c for c in IMAGE_LABEL_COLUMNS
)
ANNOTATION_COLUMNS: tuple[str, ...] = ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max")
TRAIN_READERS: tuple[str, ...] = ("R1", "R2", "R3")
TEST_READER = "R11"
SYNTHETIC_NOTE = "SYNTHETIC PHANTOM - hybridcxr - not a patient"
MANUFACTURER = "hybridcxr phantom"

_DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
_P_NORMAL = 0.30
_P_FINDING = 0.33  # per finding, given the image is not normal
_PAIR_FRACTION = 0.15  # of patients with two images
_P_MONOCHROME1 = 0.10
_MAX_VALUE = 4095


@dataclass(frozen=True)
class PhantomSummary:
    """What :func:`make_phantom_dataset` wrote: counts of images, patients, positives and boxes."""

    root: Path
    n_train: int
    n_test: int
    n_patients: int
    positives: dict[str, int]  # images whose truth carries each finding (both splits)
    boxes: int  # box rows written to the annotation CSVs (all readers, both splits)
    seed: int = 0
    images: tuple[PhantomImage, ...] = ()  # every image written, in image order, with its truth


@dataclass(frozen=True)
class PhantomImage:
    """One phantom as drawn: its file, patient, demographics and true findings and boxes (before any reader
    jitters or misses them), so other layouts (:mod:`hybridcxr.data.phantom_layouts`) can be made from it."""

    image_id: str
    split: str
    path: Path
    patient_id: str
    sex: str | None
    age: int  # years, at this image (the header may say it in months, or not at all)
    study_date: date
    findings: frozenset[str]
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...]  # (finding, true box in original pixels)
    shape: tuple[int, int]  # rows, columns


@dataclass(frozen=True)
class _Patient:
    number: int
    patient_id: str
    sex: str | None
    age: int
    split: str


@dataclass(frozen=True)
class _Plan:
    index: int
    image_id: str
    patient: _Patient
    age: int
    split: str
    findings: frozenset[str]
    study_date: date


@dataclass
class _Box:
    finding: str
    box: tuple[float, float, float, float]
    subtle: bool = False


@dataclass
class _Rendered:
    stored: np.ndarray  # uint16 as stored (MONOCHROME1 already inverted)
    photometric: str
    boxes: list[_Box]
    window: tuple[float, float]
    lungs: np.ndarray  # bool: the true lung fields (heart and mediastinum excluded, fluid included)


# ----------------------------------------------------------------------------------------------- planning


def _hex_id(seed: int, *parts: object) -> str:
    """32 hex characters, like a VinDr image id, fixed by the seed and parts."""
    text = ":".join(str(p) for p in ("hybridcxr-phantom", seed, *parts))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _draw_findings(rng: np.random.Generator, age: int, sex: str | None) -> frozenset[str]:
    """Findings of a first image: 30% normal, else each finding independently with demographic odds."""
    if rng.random() < _P_NORMAL:
        return frozenset()
    base = math.log(_P_FINDING / (1 - _P_FINDING))
    logits = {f: base for f in PHANTOM_FINDINGS}
    for f in ("Cardiomegaly", "Pleural effusion"):
        logits[f] += 0.04 * (age - 55)
    if sex == "M":
        logits["Nodule/Mass"] += math.log(1.6)
    probs = {f: float(expit(v)) for f, v in logits.items()}
    chosen = {f for f in PHANTOM_FINDINGS if rng.random() < probs[f]}
    if not chosen:
        weights = np.array([probs[f] for f in PHANTOM_FINDINGS])
        chosen = {PHANTOM_FINDINGS[int(rng.choice(len(weights), p=weights / weights.sum()))]}
    return frozenset(chosen)


def _follow_up(rng: np.random.Generator, previous: frozenset[str]) -> frozenset[str]:
    """Findings of a patient's second image: most persist, a few appear."""
    kept = {f for f in PHANTOM_FINDINGS if f in previous and rng.random() < 0.75}  # a fixed order: same seed, same draws
    new = {f for f in PHANTOM_FINDINGS if f not in previous and rng.random() < 0.10}
    return frozenset(kept | new)


def _plan(n: int, seed: int, test_fraction: float) -> list[_Plan]:
    """Patients, splits, demographics and true findings of every image, before any pixel is drawn."""
    rng = _rng(seed, 0)
    n_pairs = round(n * _PAIR_FRACTION / (1 + _PAIR_FRACTION)) if n >= 4 else 0
    n_patients = n - n_pairs
    images_per_patient = np.ones(n_patients, dtype=int)
    images_per_patient[rng.choice(n_patients, size=n_pairs, replace=False)] = 2
    test_target = round(n * test_fraction)
    order = rng.permutation(n_patients)
    in_test = np.zeros(n_patients, dtype=bool)
    count = 0
    for p in order:
        if count >= test_target:
            break
        if count + images_per_patient[p] <= test_target or count == 0:
            in_test[p] = True
            count += images_per_patient[p]
    plans: list[_Plan] = []
    for p in range(n_patients):
        sex = None if rng.random() < 0.02 else ("M" if rng.random() < 0.53 else "F")
        age = int(np.clip(round(rng.normal(54, 16)), 18, 88))
        patient = _Patient(p + 1, f"PH{_hex_id(seed, 'patient', p)[:10].upper()}", sex, age,
                           "test" if in_test[p] else "train")
        first = when = date(2019, 1, 1) + timedelta(days=int(rng.integers(0, 600)))
        findings = _draw_findings(rng, age, sex)
        for k in range(images_per_patient[p]):
            if k:
                when += timedelta(days=int(rng.integers(30, 700)))
                findings = _follow_up(rng, findings)
            index = len(plans)
            age_now = min(90, age + (when - first).days // 365)
            plans.append(_Plan(index, _hex_id(seed, "image", index), patient, age_now, patient.split,
                               findings, when))
    return plans


# ----------------------------------------------------------------------------------------------- drawing


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth unit-variance noise with features about ``cell`` pixels across (bicubic-upsampled)."""
    h, w = shape
    lo = rng.standard_normal((max(2, int(h / cell) + 3), max(2, int(w / cell) + 3))).astype(np.float32)
    up = np.array(Image.fromarray(lo, mode="F").resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    up -= up.mean()
    return up / (up.std() + 1e-6)


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 (``x`` < -3 ``width``) to 1 (``x`` > 3 ``width``): a cubic smoothstep, cheaper than
    a logistic with the same slope at 0."""
    t = np.clip(np.asarray(x, dtype=np.float32) * np.float32(1 / (6 * width)) + np.float32(0.5), 0, 1)
    return t * t * (3 - 2 * t)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, bv: float) -> np.ndarray:
    """Normalised ellipse radius squared (< 1 inside)."""
    return ((u - cu) / au) ** 2 + ((v - cv) / bv) ** 2


def _bbox(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Pixel box (x_min, y_min, x_max, y_max) of a boolean mask, or None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


@dataclass
class _Anatomy:
    """Geometry of one phantom in body coordinates: u across (0 = midline, in widths), v down (in heights)."""

    u: np.ndarray
    v: np.ndarray
    aspect: float  # rows / columns, to draw round things round
    body_a: float
    lungs: dict[int, tuple[float, float, float, float]]  # side -> (cu, cv, au, bv); side -1 = image left
    domes: dict[int, float]
    heart: tuple[float, float, float, float, float]  # centre u, centre v, long and short semi-axis, tilt
    ctr: float
    pose: tuple[float, float, float, float, float, float]  # width, height, shift x, shift y, scale, angle

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        """Pixel (x, y) of body coordinates (u, v)."""
        w, h, tx, ty, scale, theta = self.pose
        big_u, big_v = u * scale * w, (v - 0.5) * scale * h
        c, s = math.cos(theta), math.sin(theta)
        return c * big_u - s * big_v + w / 2 + tx, s * big_u + c * big_v + h / 2 + ty


def _coordinates(rng: np.random.Generator, h: int, w: int
                 ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float, float, float]]:
    """Pixel grid mapped to body coordinates under a slight random rotation, scale and shift (the pose)."""
    theta = math.radians(rng.uniform(-3.0, 3.0))
    scale = rng.uniform(0.92, 1.04)
    tx, ty = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.02) * h
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = x - (w / 2 + tx), y - (h / 2 + ty)
    c, s = math.cos(theta), math.sin(theta)
    u = (c * dx + s * dy) / (scale * w)
    v = 0.5 + (-s * dx + c * dy) / (scale * h)
    return u.astype(np.float32), v.astype(np.float32), (w, h, tx, ty, scale, theta)


def _anatomy(rng: np.random.Generator, h: int, w: int, cardiomegaly: bool) -> _Anatomy:
    """Draw the body, lung, dome and heart geometry; the heart's width sets the cardiothoracic ratio."""
    u, v, pose = _coordinates(rng, h, w)
    lungs, domes = {}, {}
    for side in (-1, 1):
        au = rng.uniform(0.155, 0.18) * (1.03 if side < 0 else 1.0)
        lungs[side] = (side * (rng.uniform(0.03, 0.045) + au), rng.uniform(0.43, 0.46), au, rng.uniform(0.35, 0.38))
        domes[side] = rng.uniform(0.68, 0.71) + (0.025 if side > 0 else 0.0)
    thorax = (lungs[1][0] + lungs[1][2]) - (lungs[-1][0] - lungs[-1][2])
    ctr = rng.uniform(0.56, 0.68) if cardiomegaly else rng.uniform(0.38, 0.49)
    half = ctr * thorax / 2
    tilt = math.radians(rng.uniform(22, 34))
    ratio = rng.uniform(0.8, 0.9) if cardiomegaly else rng.uniform(0.7, 0.8)
    long_axis = half / math.sqrt(math.cos(tilt) ** 2 + (ratio * math.sin(tilt)) ** 2)
    heart = (0.34 * half + rng.uniform(-0.01, 0.01), rng.uniform(0.62, 0.65), long_axis, ratio * long_axis, tilt)
    body_a = rng.uniform(0.45, 0.49)
    return _Anatomy(u, v, h / w, body_a, lungs, domes, heart, ctr, pose)


def _heart_mask(an: _Anatomy) -> np.ndarray:
    """Soft mask of the heart: a tilted ellipse, apex towards the image right (the patient's left)."""
    hu, hv, a, b, tilt = an.heart
    du, dv = an.u - hu, (an.v - hv) * an.aspect
    c, s = math.cos(tilt), math.sin(tilt)
    f = ((c * du + s * dv) / a) ** 2 + ((-s * du + c * dv) / b) ** 2
    return _soft(1 - f, 0.08)


def _lung_raw(an: _Anatomy, side: int, edge: float = 0.004) -> np.ndarray:
    """Soft mask of one lung field (before heart and mediastinum overlap): an ellipse widening downwards,
    cut by its diaphragm dome."""
    cu, cv, au, bv = an.lungs[side]
    taper = 0.6 + 0.4 * np.sqrt(np.clip((an.v - 0.06) / 0.45, 0, 1))
    f = ((an.u - cu) / (au * taper)) ** 2 + ((an.v - cv) / bv) ** 2
    t = (an.u - cu) / au * side  # > 0 laterally
    dome = an.domes[side] + np.where(t > 0, 0.1, 0.025) * t ** 2
    return _soft(1 - f, 0.04) * _soft(dome - an.v, edge)


def _branch(rng: np.random.Generator, draw: ImageDraw.ImageDraw, x: float, y: float, angle: float,
            length: float, width: float, value: float, depth: int) -> None:
    """Draw one tapering, slightly wavy branch and, below it, two daughter branches."""
    for _ in range(3):
        angle += rng.normal(0, 0.12)
        nx, ny = x + math.cos(angle) * length / 3, y + math.sin(angle) * length / 3
        draw.line([(x, y), (nx, ny)], fill=value, width=max(1, round(width)))
        x, y = nx, ny
    if depth > 1:
        for sign in (-1, 1):
            _branch(rng, draw, x, y, angle + sign * rng.uniform(0.25, 0.6), length * rng.uniform(0.62, 0.8),
                    width * 0.7, value * 0.88, depth - 1)


def _vessels(rng: np.random.Generator, an: _Anatomy, h: int, w: int) -> np.ndarray:
    """Lung markings: branching vessel trees fanning out of both hila, thinner and fainter outwards."""
    canvas = Image.new("F", (w, h), 0.0)
    draw = ImageDraw.Draw(canvas)
    for side in (-1, 1):
        for dv in np.linspace(-0.09, 0.09, 6):
            x, y = an.to_pixel(side * (0.085 + 0.01 * rng.standard_normal()), 0.43 + dv)
            outward = math.atan2(dv * an.aspect * 1.6, side * 0.085)
            for offset in (-0.45, 0.05, 0.5):
                _branch(rng, draw, x, y, outward + offset + rng.normal(0, 0.15), rng.uniform(0.05, 0.09) * w,
                        0.007 * w, 1.0, 5)
    return ndimage.gaussian_filter(np.asarray(canvas, dtype=np.float32), 1.2)


def _bronchi(rng: np.random.Generator, an: _Anatomy, h: int, w: int, centre: tuple[float, float],
             radius: float) -> np.ndarray:
    """Air bronchograms: a small tree of air-filled airways through a consolidation, pointing away from
    the hilum."""
    canvas = Image.new("F", (w, h), 0.0)
    draw = ImageDraw.Draw(canvas)
    hx, hy = an.to_pixel(math.copysign(0.085, centre[0] - w / 2), 0.43)
    angle = math.atan2(centre[1] - hy, centre[0] - hx)
    x, y = centre[0] - math.cos(angle) * radius * 0.8, centre[1] - math.sin(angle) * radius * 0.8
    for offset in (-0.35, 0.35):
        _branch(rng, draw, x, y, angle + offset, radius * 0.7, 0.009 * w, 1.0, 3)
    return ndimage.gaussian_filter(np.asarray(canvas, dtype=np.float32), 0.8)


def _effusion(rng: np.random.Generator, an: _Anatomy, side: int) -> tuple[np.ndarray, bool]:
    """Fluid at a lung base up to a meniscus that rises along the lateral wall; returns mask and subtlety."""
    cu, _, au, _ = an.lungs[side]
    height = rng.uniform(0.05, 0.15)
    lateral = (np.clip(side * (an.u - cu) / au, -1, 1.2) + 1) / 2
    level = an.domes[side] - height - rng.uniform(0.08, 0.16) * lateral ** 3
    return _soft(an.v - level, 0.008), height < 0.07


def _pneumothorax(rng: np.random.Generator, an: _Anatomy, side: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Apico-lateral air rim (no markings) around a collapsed lung; returns rim mask, pleural line, subtlety."""
    cu, cv, au, bv = an.lungs[side]
    g = rng.uniform(0.15, 0.35)
    taper = 0.6 + 0.4 * np.sqrt(np.clip((an.v - 0.06) / 0.45, 0, 1))
    du = (an.u - (cu - side * g * au * 0.9)) / (au * (1 - g) * taper)
    f = du ** 2 + ((an.v - (cv + g * bv * 0.4)) / (bv * (1 - 0.45 * g))) ** 2
    collapsed = _soft(1 - f, 0.03)
    line = np.exp(-(((f - 1) / 0.03) ** 2)).astype(np.float32)
    return 1 - collapsed, line, g < 0.2


def _sample_centre(rng: np.random.Generator, ok: np.ndarray, margin: float) -> tuple[float, float] | None:
    """A random pixel (x, y) at least ``margin`` pixels inside the boolean mask ``ok``."""
    step = 4
    depth = ndimage.distance_transform_edt(ok[::step, ::step]) * step
    ys, xs = np.nonzero(depth > margin)
    if ys.size == 0:
        return None
    k = int(rng.integers(ys.size))
    return float(xs[k] * step), float(ys[k] * step)


def _nodule(rng: np.random.Generator, a: np.ndarray, ok: np.ndarray, w: int) -> _Box | None:
    """Add one bright round (when large, lobulated) blob inside ``ok``; return its box."""
    h_img, w_img = a.shape
    radius = rng.uniform(0.02, 0.06) * w
    centre = _sample_centre(rng, ok, radius * 1.1)
    if centre is None:
        return None
    cx, cy = centre
    x0, x1 = int(max(0, cx - 1.4 * radius)), int(min(w_img, cx + 1.4 * radius + 1))
    y0, y1 = int(max(0, cy - 1.4 * radius)), int(min(h_img, cy + 1.4 * radius + 1))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    lobes: np.ndarray | float = 1.0
    if radius > 0.04 * w:
        angle = np.arctan2(yy - cy, xx - cx)
        phase = rng.uniform(0, 2 * np.pi, 2)
        lobes = 1 + 0.07 * (np.sin(3 * angle + phase[0]) + np.sin(5 * angle + phase[1]))
    d = np.hypot(xx - cx, yy - cy) / (radius * lobes)
    contrast = rng.uniform(0.09, 0.17)
    a[y0:y1, x0:x1] += contrast * (0.8 * np.sqrt(np.clip(1 - d ** 2, 0, 1)) + 0.2 * _soft(1 - d, 0.05))
    r = radius * 1.04
    box = (max(0.0, cx - r), max(0.0, cy - r), min(float(w_img), cx + r), min(float(h_img), cy + r))
    return _Box("Nodule/Mass", box, subtle=radius < 0.03 * w or contrast < 0.11)


def _consolidation(rng: np.random.Generator, a: np.ndarray, an: _Anatomy, ok: np.ndarray, side: int
                   ) -> _Box | None:
    """Add a patchy opacity crossed by dark radial lines (air bronchograms) in one zone of one lung."""
    h, w = a.shape
    cu, cv, au, bv = an.lungs[side]
    zone_v = cv + bv * rng.choice([-0.4, -0.05, 0.35]) + rng.uniform(-0.04, 0.04)
    zone_u = cu + side * au * rng.uniform(-0.2, 0.4)
    radius = rng.uniform(0.06, 0.1)
    f = _ellipse(an.u, an.v, zone_u, zone_v, radius, rng.uniform(0.06, 0.1) / an.aspect)
    patch = _soft(1 - f + 0.5 * _noise(rng, (h, w), 0.04 * w), 0.15) * ok
    area = float((patch > 0.5).sum())
    if area < 0.002 * h * w:
        return None
    density = rng.uniform(0.13, 0.21) * (0.85 + 0.15 * _noise(rng, (h, w), 0.02 * w))
    bronchi = _bronchi(rng, an, h, w, an.to_pixel(zone_u, zone_v), radius * w)
    a += patch * density * (1 - 0.65 * np.clip(bronchi, 0, 1))
    box = _bbox(patch > 0.5)
    return None if box is None else _Box("Consolidation", box, subtle=area < 0.008 * h * w)


@dataclass
class _Masks:
    """Soft masks (0-1, one value per pixel) of one phantom's anatomy and of the pleural findings in it.

    Why a record: the pleural findings change which parts of the lungs are aerated (``fluid``, ``air``),
    and both the attenuation image and the placing of lung lesions need all of them.
    """

    body: np.ndarray
    thick: np.ndarray  # relative body thickness across the chest
    heart: np.ndarray
    medi: np.ndarray  # mediastinum and aortic knob
    raw: dict[int, np.ndarray]  # side -> lung field before overlap and findings
    behind: np.ndarray  # 1 where neither heart nor mediastinum covers the lungs
    fluid: dict[int, np.ndarray]  # side -> pleural effusion
    air: np.ndarray  # pneumothorax rim, where it is open
    pleural_line: np.ndarray  # the visceral pleural line of a pneumothorax


def _anatomy_masks(an: _Anatomy) -> _Masks:
    """Masks of the body, heart, mediastinum and lung fields; no fluid or free air yet (draws no numbers)."""
    u, v = an.u, an.v
    a_v = an.body_a * (0.8 + 0.2 * np.sqrt(np.clip(v / 0.14, 0, 1)))
    body = _soft(a_v - np.abs(u), 0.012) * _soft(v + 0.04, 0.02)
    body = np.maximum(body, _soft(0.075 - np.abs(u), 0.01))
    thick = np.sqrt(np.clip(1 - (u / (a_v + 0.02)) ** 2, 0, 1))
    heart = _heart_mask(an)
    hv = an.heart[1]
    medi = _soft(0.05 + 0.012 * _soft(v - 0.3, 0.05) - np.abs(u - 0.006), 0.005) * _soft(hv - v, 0.02)
    medi = np.maximum(medi, _soft(1 - _ellipse(u, v, 0.047, 0.30, 0.028, 0.03), 0.15))  # aortic knob
    raw = {s: _lung_raw(an, s) for s in (-1, 1)}
    behind = (1 - heart) * (1 - medi)
    fluid = {s: np.zeros_like(u) for s in (-1, 1)}
    return _Masks(body, thick, heart, medi, raw, behind, fluid, np.zeros_like(u), np.zeros_like(u))


def _add_effusion(rng: np.random.Generator, an: _Anatomy, m: _Masks) -> list[_Box]:
    """Fill the base of one or both lungs with fluid (into ``m.fluid``); one box per side that shows it."""
    boxes: list[_Box] = []
    for s in [[-1], [1], [-1, 1]][int(rng.choice(3, p=[0.35, 0.35, 0.3]))]:
        mask, subtle = _effusion(rng, an, s)
        box = _bbox((m.raw[s] * m.behind > 0.5) & (mask > 0.5))
        if box is not None:
            boxes.append(_Box("Pleural effusion", box, subtle))
            m.fluid[s] = mask
    return boxes


def _add_pneumothorax(rng: np.random.Generator, an: _Anatomy, m: _Masks) -> list[_Box]:
    """Open an air rim in one lung where no fluid is (into ``m.air``, ``m.pleural_line``); its box if any."""
    s = int(rng.choice([-1, 1]))
    rim, line, subtle = _pneumothorax(rng, an, s)
    open_side = m.raw[s] * m.behind * (1 - m.fluid[s])
    box = _bbox(rim * open_side > 0.5)
    if box is None:
        return []
    m.air, m.pleural_line = rim * open_side, line * open_side
    return [_Box("Pneumothorax", box, subtle)]


def _cardiomegaly_box(an: _Anatomy, m: _Masks) -> list[_Box]:
    """The box of an enlarged heart (already drawn wide by :func:`_anatomy`), from below the hilum to the
    right dome; subtle when the cardiothoracic ratio is under 0.58."""
    region = (m.heart > 0.5) & (an.v > an.heart[1] - 0.09) & (an.v < an.domes[1] + 0.02)
    box = _bbox(region)
    return [] if box is None else [_Box("Cardiomegaly", box, subtle=an.ctr < 0.58)]


def _attenuation(rng: np.random.Generator, an: _Anatomy, m: _Masks, h: int, w: int, sex: str | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation of soft tissue, aerated lungs (with markings), airways, bones and breasts; returns it and
    the aerated-lung mask. Draws vessels, then marking noise, gastric air, then bones."""
    u, v = an.u, an.v
    raw, fluid, behind, heart, medi, body = m.raw, m.fluid, m.behind, m.heart, m.medi, m.body
    lung = (raw[-1] * (1 - fluid[-1]) + raw[1] * (1 - fluid[1])) * behind
    wet = (raw[-1] * fluid[-1] + raw[1] * fluid[1]) * behind
    a = 0.03 + body * (0.55 * m.thick ** 1.6 + 0.05) * (1 - lung * (0.72 - 0.12 * _soft(v - 0.62, 0.06)))
    a += heart * 0.03 * _soft(an.domes[1] - v, 0.02) + medi * 0.02 + wet * 0.02 * _soft(v - an.domes[1] + 0.05, 0.03)
    hila = _soft(1 - _ellipse(np.abs(u), v, 0.1, 0.43, 0.03, 0.06), 0.3)
    markings = 0.04 * hila + 0.045 * np.clip(_vessels(rng, an, h, w), 0, 1) + 0.008 * _noise(rng, (h, w), 0.01 * w)
    a += lung * (1 - m.air) * markings
    a -= _soft(0.012 - np.abs(u - 0.002), 0.003) * _soft(0.33 - v, 0.03) * 0.07  # trachea
    a -= _soft(1 - _ellipse(u, v, 0.2, an.domes[1] + 0.06, 0.05, 0.025), 0.15) * rng.uniform(0.04, 0.1)  # gastric air
    a -= m.air * 0.05
    a += m.pleural_line * 0.04
    a += _bones(rng, an) * body
    if sex == "F":
        for s in (-1, 1):
            cu, _, au, _ = an.lungs[s]
            a += 0.04 * _soft(1 - _ellipse(u, v, cu + s * 0.4 * au, 0.74, 0.2, 0.13), 0.3) * body
    return a, lung


def _add_lung_lesions(rng: np.random.Generator, a: np.ndarray, an: _Anatomy, m: _Masks, lung: np.ndarray,
                      findings: frozenset[str], w: int) -> list[_Box]:
    """Add a consolidation and 1-2 nodules into ``a``, inside aerated lung away from free air; their boxes.

    A consolidation goes into a random lung, or the other one when that has no room; a second nodule is
    kept apart from the first.
    """
    boxes: list[_Box] = []
    ok = (lung > 0.85) & (m.air < 0.2)
    if "Consolidation" in findings:
        s = int(rng.choice([-1, 1]))
        box = _consolidation(rng, a, an, ok & (m.raw[s] > 0.5), s) or _consolidation(
            rng, a, an, ok & (m.raw[-s] > 0.5), -s)
        if box is not None:
            boxes.append(box)
    if "Nodule/Mass" in findings:
        for _ in range(1 if rng.random() < 0.7 else 2):
            box = _nodule(rng, a, ok, w)
            if box is not None:
                boxes.append(box)
                x0, y0, x1, y1 = (int(c) for c in box.box)
                pad = x1 - x0
                ok[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = False  # a second one lies apart
    return boxes


def _draw(rng: np.random.Generator, h: int, w: int, plan: _Plan) -> tuple[np.ndarray, list[_Box], np.ndarray]:
    """Attenuation image (0 = air, ~1 = bone) of one phantom, its true boxes and its true lung fields.

    The order of the steps is the order of the random draws, which the seed's outputs depend on.
    """
    findings = plan.findings
    an = _anatomy(rng, h, w, "Cardiomegaly" in findings)
    m = _anatomy_masks(an)
    boxes: list[_Box] = []
    if "Pleural effusion" in findings:
        boxes += _add_effusion(rng, an, m)
    if "Pneumothorax" in findings:
        boxes += _add_pneumothorax(rng, an, m)
    if "Cardiomegaly" in findings:
        boxes += _cardiomegaly_box(an, m)
    a, lung = _attenuation(rng, an, m, h, w, plan.patient.sex)
    boxes += _add_lung_lesions(rng, a, an, m, lung, findings, w)
    return a, boxes, lung_fields(m)


def lung_fields(m: _Masks) -> np.ndarray:
    """The true lung mask of a phantom: both lung fields where the heart and mediastinum do not cover them,
    pleural fluid included (as the JSRT, Montgomery and Shenzhen masks are drawn)."""
    return ((m.raw[-1] + m.raw[1]) * m.behind) > 0.5


def _bones(rng: np.random.Generator, an: _Anatomy) -> np.ndarray:
    """Spine (with vertebrae), posterior and anterior ribs and clavicles, as added attenuation."""
    u, v = an.u, an.v
    d = np.abs(u)
    spine = _soft(0.032 - np.abs(u - 0.002), 0.004)
    out = 0.03 * spine * (0.75 + 0.25 * np.cos(np.pi * (v - rng.uniform(0, 0.04)) / 0.042) ** 2)
    lateral = np.where(u < 0, an.lungs[-1][2] - an.lungs[-1][0], an.lungs[1][0] + an.lungs[1][2])
    cage = _soft(lateral + 0.03 - d, 0.01) * _soft(max(an.domes.values()) + 0.06 - v, 0.02)
    spacing = rng.uniform(0.058, 0.064)
    phase = (v - rng.uniform(1.4, 1.8) * (d - 0.06) ** 2 - rng.uniform(0.06, 0.08)) / spacing
    phase = phase - 0.025 * phase ** 2  # ribs spread out downwards
    frac = np.abs(phase - np.round(phase))
    half = rng.uniform(0.14, 0.17)  # half band width, in spacings
    band = _soft(half - frac, 0.02) * _soft(phase + 0.2, 0.05) * _soft(9.4 - phase, 0.05)
    cortex = np.exp(-(((frac - half) / 0.035) ** 2)) * band
    out += (0.032 * band + 0.025 * cortex) * _soft(d - 0.03, 0.006) * cage
    front = np.clip(0.41 - d, 0, None)
    phase = (v - 0.3 * front - 0.5 * front ** 2 - rng.uniform(0.1, 0.13)) / rng.uniform(0.07, 0.08)
    frac = np.abs(phase - np.round(phase))
    band = _soft(0.2 - frac, 0.03) * _soft(phase + 0.2, 0.05) * _soft(5.4 - phase, 0.05)
    out += 0.018 * band * _soft(d - 0.12, 0.02) * cage
    clav_v = rng.uniform(0.12, 0.14) - 0.3 * d + 0.25 * d ** 2
    clav = _soft(0.013 - np.abs(v - clav_v), 0.003) * _soft(d - 0.025, 0.008) * _soft(0.34 - d, 0.02)
    return out + 0.09 * clav


def _render(plan: _Plan, seed: int, size: tuple[int, int] | None) -> _Rendered:
    """Draw one phantom and quantise it to 12 bits as stored (inverted when MONOCHROME1)."""
    rng = _rng(seed, 1, plan.index)
    if size is None:
        h = int(rng.integers(640, 897))
        w = int(np.clip(round(h * rng.uniform(0.8, 0.98)), 560, 800))
    else:
        h, w = size
    a, boxes, lungs = _draw(rng, h, w, plan)
    gx, gy = rng.normal(0, 0.03, 2)
    yy, xx = np.ogrid[0:h, 0:w]
    a = a * (1 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5)) + 0.012 * _noise(rng, (h, w), 0.2 * w)
    a = ndimage.gaussian_filter(a, 0.6)
    gain, offset, k = rng.uniform(3300, 3700), rng.uniform(150, 350), rng.uniform(0.9, 1.4)
    tone = (1 - np.exp(-k * np.clip(a, 0, None))) / (1 - math.exp(-k))  # detector-like compression of dense parts
    pixels = offset + gain * tone + rng.normal(0, 14, (h, w)).astype(np.float32)
    pixels = np.clip(np.rint(pixels), 0, _MAX_VALUE).astype(np.uint16)
    lo, hi = np.percentile(pixels, [0.5, 99.9])
    hi += 0.03 * (hi - lo)
    centre, width = (lo + hi) / 2, max(hi - lo, 1.0)
    photometric = "MONOCHROME2"
    if rng.random() < _P_MONOCHROME1:
        photometric = "MONOCHROME1"
        pixels = (_MAX_VALUE - pixels).astype(np.uint16)
        centre = _MAX_VALUE - centre
    return _Rendered(pixels, photometric, boxes, (round(float(centre)), round(float(width))), lungs)


# ----------------------------------------------------------------------------------------------- readers


def _jitter(rng: np.random.Generator, box: tuple[float, float, float, float], sd: float, scale: float,
            shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """A reader's version of a true box: scaled about its centre, each side moved by N(0, sd * size)."""
    h, w = shape
    x0, y0, x1, y1 = box
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * scale, (y1 - y0) * scale
    e = rng.normal(0, sd, 4)
    nx0 = float(np.clip(cx - bw / 2 + e[0] * bw, 0, w - 1))
    ny0 = float(np.clip(cy - bh / 2 + e[1] * bh, 0, h - 1))
    nx1 = float(np.clip(cx + bw / 2 + e[2] * bw, nx0 + 1, w))
    ny1 = float(np.clip(cy + bh / 2 + e[3] * bh, ny0 + 1, h))
    return round(nx0, 2), round(ny0, 2), round(nx1, 2), round(ny1, 2)


def _reader_rows(plan: _Plan, seed: int, boxes: list[_Box], shape: tuple[int, int]
                 ) -> tuple[list[dict], list[dict]]:
    """Annotation rows and image-label rows of every reader of one image."""
    rng = _rng(seed, 2, plan.index)
    train = plan.split == "train"
    readers = TRAIN_READERS if train else (TEST_READER,)
    columns = IMAGE_LABEL_COLUMNS if train else IMAGE_LABEL_COLUMNS_TEST
    scales = {"R1": 1.0, "R2": 1.05, "R3": 0.97}
    annotations, labels = [], []
    w = shape[1]
    for reader in readers:
        drawn = []
        for b in boxes:
            p_miss = (0.2 if b.subtle else 0.03) if train else 0.0
            if rng.random() < p_miss:
                continue
            sd = 0.04 if train else 0.01
            drawn.append((b.finding, _jitter(rng, b.box, sd, scales.get(reader, 1.0), shape)))
        label = dict.fromkeys(columns, 0)
        for finding, box in drawn:
            annotations.append(dict(zip(ANNOTATION_COLUMNS, (plan.image_id, reader, finding, *box))))
            label[finding] = 1
            if finding == "Consolidation":
                label["Pneumonia"] = 1
            if finding == "Nodule/Mass" and (box[2] - box[0]) >= 0.1 * w:
                label["Lung tumor"] = 1
        if not drawn:
            annotations.append({"image_id": plan.image_id, "rad_id": reader, "class_name": NO_FINDING,
                                "x_min": np.nan, "y_min": np.nan, "x_max": np.nan, "y_max": np.nan})
            label[NO_FINDING] = 1
        labels.append({"image_id": plan.image_id, "rad_id": reader, **label})
    return annotations, labels


# ----------------------------------------------------------------------------------------------- writing


def _age_string(rng: np.random.Generator, age: int) -> str:
    """DICOM AS: nearly always ``NNNY``; a few adults in months (``NNNM``) and a few empty."""
    r = rng.random()
    if r < 0.03:
        return ""
    if r < 0.05 and age * 12 <= 999:
        return f"{age * 12 + int(rng.integers(0, 12)):03d}M"
    return f"{age:03d}Y"


def _dataset(plan: _Plan, rendered: _Rendered, seed: int):
    """The DICOM dataset of one phantom (Digital X-Ray For Presentation, Explicit VR Little Endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    rng = _rng(seed, 3, plan.index)
    uid = lambda kind: generate_uid(entropy_srcs=["hybridcxr-phantom", str(seed), plan.image_id, kind])  # noqa: E731
    sop_uid = uid("sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HYBRIDCXR_PHTM"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = _DX_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = plan.study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00"
    ds.AccessionNumber = ""
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST PA (SYNTHETIC)"
    ds.SeriesDescription = SYNTHETIC_NOTE
    ds.ImageComments = f"{SYNTHETIC_NOTE}; seed {seed}; image {plan.index}"
    ds.PatientName = f"PHANTOM^{plan.patient.number}"
    ds.PatientID = plan.patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = plan.patient.sex or ""
    ds.PatientAge = _age_string(rng, plan.age)
    ds.PatientIdentityRemoved = "YES"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    pixels = rendered.stored
    spacing = round(float(rng.uniform(0.40, 0.50)), 3)
    ds.PixelSpacing = ds.ImagerPixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = rendered.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = rendered.window
    ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a table atomically, with ``\\n`` line ends so the tables are byte-identical on every platform."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def _prepare_root(out: Path) -> None:
    """Create the folders; refuse to write into a non-empty folder that is not an earlier phantom set."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        readme = out / "README.txt"
        if not (readme.is_file() and SYNTHETIC_NOTE in readme.read_text(errors="replace")):
            raise InputError(out, "folder is not empty and holds no phantom README.txt; pick an empty folder")
    for sub in ("train", "test", "annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def _readme(n: int, seed: int, n_train: int, n_test: int, size: tuple[int, int] | None) -> str:
    size_text = f"{size[0]} x {size[1]} (rows x columns)" if size else "varying, 640-896 rows x 560-800 columns"
    return (
        f"{SYNTHETIC_NOTE}\n\n"
        "Synthetic chest radiographs drawn by hybridcxr.data.phantom.make_phantom_dataset, laid out as\n"
        "PhysioNet's VinDr-CXR 1.0.0 (train/, test/, annotations/). No patient data: every image is a\n"
        "parametric drawing (body, lungs, heart, mediastinum, spine, ribs, diaphragm) plus noise, with\n"
        f"findings {', '.join(PHANTOM_FINDINGS)} drawn with known boxes.\n\n"
        f"seed: {seed}\nimages: {n} ({n_train} train, {n_test} test)\nsize: {size_text}\n"
        f"readers: train {', '.join(TRAIN_READERS)} (jittered boxes, occasional misses); test {TEST_READER}\n"
        "Re-create with: python -c \"from hybridcxr.data.phantom import make_phantom_dataset as m; "
        f"m('OUT', n={n}, seed={seed})\"\n"
    )


#: What :func:`_make_one` returns: the image with its truth, annotation rows and image-label rows.
_Result = tuple[_Plan, PhantomImage, list[dict], list[dict]]


def _make_one(job: tuple[_Plan, int, tuple[int, int] | None, str, bool]) -> _Result:
    """Draw and write one phantom (and, when asked, its lung mask); return its plan, the image with its
    truth, annotation rows and image-label rows."""
    plan, seed, size, root, masks = job
    rendered = _render(plan, seed, size)
    rows, label_rows = _reader_rows(plan, seed, rendered.boxes, rendered.stored.shape)
    ds = _dataset(plan, rendered, seed)
    path = Path(root) / plan.split / f"{plan.image_id}.dicom"
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    if masks and plan.split == "train":
        _write_lung_pair(Path(root) / LUNG_DIR, path, rendered.lungs)
    image = PhantomImage(plan.image_id, plan.split, path, plan.patient.patient_id, plan.patient.sex, plan.age,
                         plan.study_date, frozenset(b.finding for b in rendered.boxes),
                         tuple((b.finding, b.box) for b in rendered.boxes), tuple(rendered.stored.shape))
    return plan, image, rows, label_rows


LUNG_DIR = "lungs"
"""Where ``lung_masks=True`` puts a mask dataset of the training phantoms (``hybridcxr train lungs --data``)."""


def _write_lung_pair(folder: Path, image: Path, mask: np.ndarray) -> None:
    """``images/ID.dicom`` (a hard link to the phantom, a copy where links fail) and ``masks/ID.png`` (0/255)."""
    import shutil

    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    link = folder / "images" / image.name
    link.unlink(missing_ok=True)
    try:
        os.link(image, link)
    except OSError:
        shutil.copyfile(image, link)
    with atomic_path(folder / "masks" / f"{image.stem}.png") as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")


def _results(jobs: list, workers: int, progress: bool) -> Iterator[_Result]:
    """Results of :func:`_make_one` in job order, in ``workers`` processes, advancing the shared progress
    bar (:func:`hybridcxr.progress.progress_bar`) once per image written."""
    with progress_bar(len(jobs), "phantoms", progress) as advance:
        for result in _map_jobs(jobs, workers):
            advance()
            yield result


def _map_jobs(jobs: list, workers: int) -> Iterator[_Result]:
    """:func:`_make_one` over ``jobs`` in job order: in this process, or in a pool of ``workers``."""
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            yield from pool.map(_make_one, jobs, chunksize=4)
    else:
        yield from map(_make_one, jobs)


def make_phantom_dataset(
    out: str | Path,
    n: int = 200,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    size: tuple[int, int] | None = None,
    progress: bool = False,
    workers: int = 1,
    lung_masks: bool = False,
) -> PhantomSummary:
    """Write ``n`` synthetic chest radiographs and their VinDr-style tables under ``out``.

    Args:
        out: folder to write (created; must be empty or an earlier phantom set, whose files are replaced).
        n: number of images (patients with two images count twice).
        seed: fixes everything written, whatever ``workers`` is.
        test_fraction: share of images in ``test/`` (whole patients go to one split).
        size: ``(rows, columns)`` of every image; by default each image draws its own portrait size.
        progress: show a progress bar on stderr.
        workers: processes drawing images (about 0.13 s per default-size image each).
        lung_masks: also write the training phantoms' true lung fields as a mask dataset under ``out/lungs``
            (``images/``, ``masks/``, ``patients.csv``), for ``hybridcxr train lungs``.

    Returns:
        A :class:`PhantomSummary` of what was written.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if size is not None and (len(size) != 2 or min(size) < 128):
        raise ValueError(f"size must be (rows, columns), each at least 128, got {size}")
    root = Path(out)
    _prepare_root(root)
    plans = _plan(n, seed, test_fraction)
    annotations: dict[str, list[dict]] = {"train": [], "test": []}
    labels: dict[str, list[dict]] = {"train": [], "test": []}
    positives = dict.fromkeys(PHANTOM_FINDINGS, 0)
    jobs = [(plan, seed, size, str(root), lung_masks) for plan in plans]
    images = []
    for plan, image, rows, label_rows in _results(jobs, max(1, min(workers, n)), progress):
        images.append(image)
        for finding in image.findings:
            positives[finding] += 1
        annotations[plan.split] += rows
        labels[plan.split] += label_rows
    _remove_stale(root, {(p.split, p.image_id) for p in plans})
    if lung_masks:
        train = [p for p in plans if p.split == "train"]
        keep = {p.image_id for p in train}
        for old in [*(root / LUNG_DIR / "images").glob("*"), *(root / LUNG_DIR / "masks").glob("*")]:
            if old.stem not in keep:
                old.unlink()
        _write_csv(pd.DataFrame({"image_id": [p.image_id for p in train],
                                 "patient_id": [p.patient.patient_id for p in train]}),
                   root / LUNG_DIR / "patients.csv")
    boxes = 0
    for split, columns in (("train", IMAGE_LABEL_COLUMNS), ("test", IMAGE_LABEL_COLUMNS_TEST)):
        ann = pd.DataFrame(annotations[split], columns=list(ANNOTATION_COLUMNS))
        boxes += int(ann["x_min"].notna().sum())
        _write_csv(ann, root / "annotations" / f"annotations_{split}.csv")
        lab = pd.DataFrame(labels[split], columns=["image_id", "rad_id", *columns])
        _write_csv(lab, root / "annotations" / f"image_labels_{split}.csv")
    n_test = sum(p.split == "test" for p in plans)
    readme = _readme(n, seed, n - n_test, n_test, size)
    write_text(root / "README.txt", readme)
    return PhantomSummary(root, n - n_test, n_test, len({p.patient.patient_id for p in plans}),
                          positives, boxes, seed, tuple(images))


def _remove_stale(root: Path, keep: set[tuple[str, str]]) -> None:
    """Delete phantom DICOMs of an earlier run that this run did not write (other n, seed or split)."""
    for split in ("train", "test"):
        for path in (root / split).glob("*.dicom"):
            if (split, path.stem) not in keep:
                path.unlink()

"""Findings vocabularies of the supported datasets, the mapping between them and one colour per finding.

Every finding name used anywhere in hybridcxr comes from here, so a table column, a YOLO class index and an
overlay colour always agree.

>>> VINDR_CXR[:2]
('Aortic enlargement', 'Atelectasis')
>>> to_vindr("Mass")
'Nodule/Mass'
"""

from __future__ import annotations

import hashlib

NO_FINDING = "No finding"

#: VinDr-CXR's 14 local findings with boxes (Kaggle class ids 0..13; id 14 is "No finding").
VINDR_CXR: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
)

#: VinDr-PCXR (paediatric) image-level diagnoses, as named in its image_labels CSVs.
VINDR_PCXR: tuple[str, ...] = (
    "Bronchitis",
    "Brocho-pneumonia",
    "Bronchiolitis",
    "Situs inversus",
    "Pneumonia",
    "Pleuro-pneumonia",
    "Diagphramatic hernia",
    "Tuberculosis",
    "Congenital emphysema",
    "CPAM",
    "Hyaline membrane disease",
    "Mediastinal tumor",
    "Lung tumor",
    "Other disease",
)

#: VinDr-PCXR (paediatric) local lesions with boxes, as spelt in its annotations CSVs (typos included: a class
#: name is matched as written). 11 are spelt as VinDr-CXR's findings and 2 as NIH's (Edema, Emphysema); the
#: 15 with a VinDr-CXR counterpart are in :data:`hybridcxr.data.sources.vindr_pcxr.LESION_TO_VINDR`.
VINDR_PCXR_LESIONS: tuple[str, ...] = (
    "Anterior mediastinal mass", "Aortic enlargement", "Atelectasis", "Boot-shaped heart", "Bronchectasis",
    "Bronchial thickening", "Calcification", "Cardiomegaly", "Chest wall mass", "Clavicle fracture",
    "Consolidation", "Dextro cardia", "Diffuse aveolar opacity", "Edema", "Egg on string sign", "Emphysema",
    "Enlarged PA", "Expanded edges of the anterior ribs", "Infiltration", "Interstitial lung disease - ILD",
    "Intrathoracic digestive structure", "Lung cavity", "Lung cyst", "Lung hyperinflation", "Mediastinal shift",
    "Other lesion", "Other nodule/mass", "Other opacity", "Paraveterbral mass",
    "Peribronchovascular interstitial opacity", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Reticulonodular opacity", "Stomach on the right side",
)

#: NIH ChestX-ray14's 14 findings, as named in Data_Entry_2017 ("Infiltrate" in BBox_List maps to "Infiltration").
NIH14: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: ChestX-Det10's 10 classes, as named in its JSON ``syms``.
CHESTX_DET10: tuple[str, ...] = (
    "Atelectasis",
    "Calcification",
    "Consolidation",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Fracture",
    "Mass",
    "Nodule",
    "Pneumothorax",
)

#: Guangzhou paediatric pneumonia set (Kermany et al. 2018): one finding.
PNEUMONIA: tuple[str, ...] = ("Pneumonia",)

VOCABULARIES: dict[str, tuple[str, ...]] = {
    "vindr-cxr": VINDR_CXR,
    "vindr-pcxr": VINDR_PCXR,
    "vindr-pcxr-lesions": VINDR_PCXR_LESIONS,
    "nih": NIH14,
    "chestx-det10": CHESTX_DET10,
    "pneumonia": PNEUMONIA,
}

#: The vocabularies VinDr-PCXR can be read in (``findings=`` of its adapter, ``--findings`` of ``prepare``):
#: its image-level diagnoses, its 36 boxed lesions, or those lesions as VinDr-CXR's adult findings.
VINDR_PCXR_VIEWS: dict[str, tuple[str, ...]] = {
    "diagnoses": VINDR_PCXR,
    "lesions": VINDR_PCXR_LESIONS,
    "lesions-adult": VINDR_CXR,
}

#: Other datasets' names for VinDr-CXR findings (the nearest radiological equivalent).
_TO_VINDR: dict[str, str] = {
    "Effusion": "Pleural effusion",
    "Pleural_Thickening": "Pleural thickening",
    "Pleural thickening": "Pleural thickening",
    "Fibrosis": "Pulmonary fibrosis",
    "Mass": "Nodule/Mass",
    "Nodule": "Nodule/Mass",
    "Infiltrate": "Infiltration",
}

#: Spelling variants seen in published tables, mapped to the vocabulary's own name.
ALIASES: dict[str, str] = {
    "Infiltrate": "Infiltration",
    "No Finding": NO_FINDING,
    "No findings": NO_FINDING,
}


def canonical(name: str) -> str:
    """Return the vocabulary spelling of a finding name (``"Infiltrate"`` -> ``"Infiltration"``)."""
    name = name.strip()
    return ALIASES.get(name, name)


def to_vindr(name: str) -> str | None:
    """Map a finding of any supported vocabulary onto VinDr-CXR's 14, or None where there is no counterpart."""
    name = canonical(name)
    if name in VINDR_CXR:
        return name
    return _TO_VINDR.get(name)


# Okabe-Ito (colour-blind safe) and Paul Tol's "muted" scheme, ordered so that VinDr-CXR's 14 findings (by
# index) get no near twins: Nodule/Mass (8) is wine, not a second light blue beside Atelectasis; Other lesion
# (9) sand, not a second teal beside Calcification; Pneumothorax (12) purple, not a second yellow beside
# Cardiomegaly. The last two serve longer vocabularies; VinDr-PCXR's 36 lesions cycle through the 16 (lesion
# k and k + 16 share a colour, their boxes told apart by their labels).
PALETTE: tuple[str, ...] = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#332288", "#882255", "#DDCC77", "#117733", "#999933", "#AA4499", "#CC6677", "#88CCEE", "#44AA99",
)


def colour(finding: str, findings: tuple[str, ...] | list[str] = VINDR_CXR) -> str:
    """Return the overlay colour (hex) of a finding: fixed by its index in its vocabulary."""
    findings = tuple(findings)
    name = canonical(finding)
    index = findings.index(name) if name in findings else sum(map(ord, name))
    return PALETTE[index % len(PALETTE)]


# ------------------------------------------------------------------------------------------------ codes
LOCAL_SCHEME = "99HYBRIDCXR"
"""Coding Scheme Designator of hybridcxr's own codes (PS3.3 8.2: a private scheme starts with "99"), for the
findings no SNOMED CT concept was found for. Each SR we write declares it in its Coding Scheme Identification
Sequence; a code value there is the finding's name in capitals, 16 characters at most."""
LOCAL_SCHEME_NAME = "hybridcxr findings"

_SCT = "SCT"

#: One coded concept per finding of every vocabulary above: (code value, coding scheme designator, meaning).
#: SNOMED CT ("SCT") where the concept was seen in a published source, cited on its row:
#:   [DICOM] a PS3.16 context group (CID), as tabulated in pydicom 3.0's ``pydicom/sr/_concepts_dict.py`` and
#:           in bvdh/dicom-terminology-in-fhir (``input/fsh/ValueSet-dicom-cid-*.fsh``);
#:   [TTE]   the SNOMED labelling codes in the README of "Time-to-event pretraining for 3D medical imaging"
#:           (Huo et al., ICLR 2025, Stanford Shah lab), with other code tables agreeing;
#:   [OHDSI] OHDSI/Covid-19 ``Vocabulary/Wiki/phenotypes/Pneumonia.md`` (concept_code 233604007);
#:   [FHIR]  SNOMED codings in published FHIR resources and SNOMED tooling found by code search, several
#:           agreeing ("Tuberculosis (disorder)", "Pulmonary emphysema (disorder)", "Fracture of bone (disorder)",
#:           "Bronchiectasis (disorder)").
#: hybridcxr's own scheme (:data:`LOCAL_SCHEME`) where no source was found; a code never changes once in PACS.
CODES: dict[str, tuple[str, str, str]] = {
    "Aortic enlargement": ("AORTIC-ENLARGE", LOCAL_SCHEME, "Aortic enlargement"),
    "Atelectasis": ("46621007", _SCT, "Atelectasis"),  # [TTE]
    "Calcification": ("CALCIFICATION", LOCAL_SCHEME, "Calcification"),
    "Cardiomegaly": ("8186001", _SCT, "Cardiomegaly"),  # [TTE]; DICOM CID 12249 (fetal) lists 287272002
    "Consolidation": ("95436008", _SCT, "Consolidation"),  # [TTE]
    "ILD": ("ILD", LOCAL_SCHEME, "Interstitial lung disease"),
    "Infiltration": ("INFILTRATION", LOCAL_SCHEME, "Infiltration"),
    "Lung Opacity": ("LUNG-OPACITY", LOCAL_SCHEME, "Lung opacity"),
    "Nodule/Mass": ("NODULE-MASS", LOCAL_SCHEME, "Nodule or mass"),
    "Other lesion": ("OTHER-LESION", LOCAL_SCHEME, "Other lesion"),
    "Pleural effusion": ("60046008", _SCT, "Pleural effusion"),  # [DICOM] CID 645, 8134
    "Pleural thickening": ("PLEURAL-THICK", LOCAL_SCHEME, "Pleural thickening"),
    "Pneumothorax": ("36118008", _SCT, "Pneumothorax"),  # [DICOM] CID 6105
    "Pulmonary fibrosis": ("112674009", _SCT, "Fibrosis"),  # [DICOM] CID 6335-6338
    "Bronchitis": ("BRONCHITIS", LOCAL_SCHEME, "Bronchitis"),
    "Brocho-pneumonia": ("BRONCHOPNEUMONIA", LOCAL_SCHEME, "Bronchopneumonia"),
    "Bronchiolitis": ("BRONCHIOLITIS", LOCAL_SCHEME, "Bronchiolitis"),
    "Situs inversus": ("SITUS-INVERSUS", LOCAL_SCHEME, "Situs inversus"),
    "Pneumonia": ("233604007", _SCT, "Pneumonia"),  # [OHDSI]
    "Pleuro-pneumonia": ("PLEUROPNEUMONIA", LOCAL_SCHEME, "Pleuropneumonia"),
    "Diagphramatic hernia": ("DIAPHRAGM-HERNIA", LOCAL_SCHEME, "Diaphragmatic hernia"),
    "Tuberculosis": ("56717001", _SCT, "Tuberculosis"),  # [FHIR]
    "Congenital emphysema": ("CONG-EMPHYSEMA", LOCAL_SCHEME, "Congenital emphysema"),
    "CPAM": ("CPAM", LOCAL_SCHEME, "Congenital pulmonary airway malformation"),
    "Hyaline membrane disease": ("HYALINE-MEMBRANE", LOCAL_SCHEME, "Hyaline membrane disease"),
    "Mediastinal tumor": ("MEDIAST-TUMOR", LOCAL_SCHEME, "Mediastinal tumor"),
    "Lung tumor": ("LUNG-TUMOR", LOCAL_SCHEME, "Lung tumor"),
    "Other disease": ("OTHER-DISEASE", LOCAL_SCHEME, "Other disease"),
    "Effusion": ("60046008", _SCT, "Pleural effusion"),  # [DICOM], as "Pleural effusion"
    "Mass": ("4147007", _SCT, "Mass"),  # [DICOM] CID 6104
    "Nodule": ("27925004", _SCT, "Nodule"),  # [DICOM] CID 6102, 6104
    "Edema": ("19242006", _SCT, "Pulmonary edema"),  # [DICOM] CID 3700
    "Emphysema": ("87433001", _SCT, "Pulmonary emphysema"),  # [FHIR]
    "Fibrosis": ("112674009", _SCT, "Fibrosis"),  # [DICOM] CID 6335-6338
    "Pleural_Thickening": ("PLEURAL-THICK", LOCAL_SCHEME, "Pleural thickening"),
    "Hernia": ("HERNIA", LOCAL_SCHEME, "Hernia"),
    "Fracture": ("125605004", _SCT, "Fracture of bone"),  # [FHIR]
    # VinDr-PCXR's lesions without a row above (its other 13, e.g. Cardiomegaly, Edema, have one); the two
    # renamed in VinDr-CXR share that row's concept.
    "Anterior mediastinal mass": ("ANT-MEDIAST-MASS", LOCAL_SCHEME, "Anterior mediastinal mass"),
    "Boot-shaped heart": ("BOOT-HEART", LOCAL_SCHEME, "Boot-shaped heart"),
    "Bronchectasis": ("12295008", _SCT, "Bronchiectasis"),  # [FHIR]
    "Bronchial thickening": ("BRONCH-THICK", LOCAL_SCHEME, "Bronchial wall thickening"),
    "Chest wall mass": ("CHEST-WALL-MASS", LOCAL_SCHEME, "Chest wall mass"),
    "Clavicle fracture": ("CLAVICLE-FRACT", LOCAL_SCHEME, "Clavicle fracture"),
    "Dextro cardia": ("DEXTROCARDIA", LOCAL_SCHEME, "Dextrocardia"),
    "Diffuse aveolar opacity": ("DIFF-ALV-OPACITY", LOCAL_SCHEME, "Diffuse alveolar opacity"),
    "Egg on string sign": ("EGG-ON-STRING", LOCAL_SCHEME, "Egg on a string sign"),
    "Enlarged PA": ("ENLARGED-PA", LOCAL_SCHEME, "Enlarged pulmonary artery"),
    "Expanded edges of the anterior ribs": ("EXP-ANT-RIB-ENDS", LOCAL_SCHEME, "Expanded anterior rib ends"),
    "Interstitial lung disease - ILD": ("ILD", LOCAL_SCHEME, "Interstitial lung disease"),  # as "ILD"
    "Intrathoracic digestive structure": ("INTRATHOR-DIGEST", LOCAL_SCHEME, "Intrathoracic digestive structure"),
    "Lung cavity": ("LUNG-CAVITY", LOCAL_SCHEME, "Lung cavity"),
    "Lung cyst": ("LUNG-CYST", LOCAL_SCHEME, "Lung cyst"),
    "Lung hyperinflation": ("LUNG-HYPERINFL", LOCAL_SCHEME, "Lung hyperinflation"),
    "Mediastinal shift": ("MEDIAST-SHIFT", LOCAL_SCHEME, "Mediastinal shift"),
    "Other nodule/mass": ("NODULE-MASS", LOCAL_SCHEME, "Nodule or mass"),  # as "Nodule/Mass"
    "Other opacity": ("OTHER-OPACITY", LOCAL_SCHEME, "Other opacity"),
    "Paraveterbral mass": ("PARAVERTEB-MASS", LOCAL_SCHEME, "Paravertebral mass"),
    "Peribronchovascular interstitial opacity": ("PERIBRONCHOVASC", LOCAL_SCHEME,
                                                 "Peribronchovascular interstitial opacity"),
    "Reticulonodular opacity": ("RETICULONODULAR", LOCAL_SCHEME, "Reticulonodular opacity"),
    "Stomach on the right side": ("STOMACH-RIGHT", LOCAL_SCHEME, "Stomach on the right side"),
    NO_FINDING: ("NO-FINDING", LOCAL_SCHEME, "No finding"),
}


def finding_code(name: str):
    """The coded concept of a finding (a highdicom ``CodedConcept``), for DICOM SR and other coded outputs.

    One table (:data:`CODES`) serves every writer, so a finding is coded the same everywhere. A finding in no
    vocabulary (a dataset's own label names) gets :func:`local_code`: a stable private code, so its SR is still
    written and the same name always carries the same code.

    >>> finding_code("Effusion").value, finding_code("Effusion").scheme_designator
    ('60046008', 'SCT')
    """
    from highdicom.sr import CodedConcept  # heavy import: only where a code is written

    key = canonical(name)
    value, scheme, meaning = CODES[key] if key in CODES else local_code(key)
    return CodedConcept(value, scheme, meaning)


def local_code(name: str) -> tuple[str, str, str]:
    """A private code for a finding outside :data:`CODES`: ``X`` and 8 hex digits of the name's SHA-1 (within
    the 16 characters of a code value, the same on every machine), the name itself (64 at most) as meaning.

    >>> local_code("Unicorn")[1:]
    ('99HYBRIDCXR', 'Unicorn')
    """
    if not name.strip():
        raise ValueError("a finding needs a non-empty name to be coded")
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8].upper()
    return f"X{digest}", LOCAL_SCHEME, name[:64]

"""Findings vocabularies of the supported datasets, the mapping between them and one colour per finding.

Every finding name used anywhere in hybridcxr comes from here, so a table column, a YOLO class index and an
overlay colour always agree.

>>> VINDR_CXR[:2]
('Aortic enlargement', 'Atelectasis')
>>> to_vindr("Mass")
'Nodule/Mass'
"""

from __future__ import annotations

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
    "nih": NIH14,
    "chestx-det10": CHESTX_DET10,
    "pneumonia": PNEUMONIA,
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
# Cardiomegaly. The last two serve longer vocabularies.
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

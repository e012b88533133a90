"""The findings' code table: every finding of every vocabulary coded once, in a form DICOM accepts."""

from __future__ import annotations

import pytest

from hybridcxr.findings import (
    CODES,
    LOCAL_SCHEME,
    NO_FINDING,
    PALETTE,
    VINDR_CXR,
    VINDR_PCXR_LESIONS,
    VINDR_PCXR_VIEWS,
    VOCABULARIES,
    colour,
    finding_code,
)


def test_every_finding_of_every_vocabulary_has_a_code():
    names = {NO_FINDING} | {f for vocabulary in VOCABULARIES.values() for f in vocabulary}
    assert names == set(CODES)


def test_codes_fit_dicom_and_use_two_schemes():
    for name, (value, scheme, meaning) in CODES.items():
        assert 0 < len(value) <= 16 and 0 < len(meaning) <= 64, name  # Code Value is SH, Code Meaning LO
        assert scheme in ("SCT", LOCAL_SCHEME), name
        assert value.isdigit() == (scheme == "SCT"), name  # SNOMED CT ids are digits; ours are words
    assert LOCAL_SCHEME.startswith("99")  # PS3.3 8.2: private coding schemes start with "99"


def test_one_concept_one_meaning():
    meanings: dict[tuple[str, str], str] = {}
    for value, scheme, meaning in CODES.values():
        assert meanings.setdefault((value, scheme), meaning) == meaning


@pytest.mark.parametrize(("name", "value"), [("Pleural effusion", "60046008"), ("Effusion", "60046008"),
                                             ("Pneumothorax", "36118008"), ("Cardiomegaly", "8186001"),
                                             ("Infiltrate", "INFILTRATION")])
def test_finding_code(name, value):
    assert finding_code(name).value == value


def test_a_finding_outside_every_vocabulary_gets_a_stable_private_code():
    code = finding_code("Unicorn")
    assert (code.scheme_designator, code.meaning) == ("99HYBRIDCXR", "Unicorn")
    assert code.value == finding_code(" Unicorn ").value != finding_code("Unicorns").value
    assert len(code.value) <= 16 and code.value not in {value for value, _, _ in CODES.values()}
    assert len(finding_code("x" * 100).meaning) == 64
    with pytest.raises(ValueError, match="non-empty"):
        finding_code("  ")


def test_paediatric_lesions_are_the_36_of_the_annotation_tables():
    assert len(VINDR_PCXR_LESIONS) == len(set(VINDR_PCXR_LESIONS)) == 36
    assert {"Boot-shaped heart", "Bronchial thickening", "Other nodule/mass", "Stomach on the right side"} <= set(
        VINDR_PCXR_LESIONS)
    assert set(VINDR_PCXR_VIEWS) == {"diagnoses", "lesions", "lesions-adult"}
    assert VINDR_PCXR_VIEWS["lesions"] == VINDR_PCXR_LESIONS and VINDR_PCXR_VIEWS["lesions-adult"] == VINDR_CXR


@pytest.mark.parametrize("vocabulary", list(VOCABULARIES))
def test_findings_closer_than_the_palette_get_different_colours(vocabulary):
    findings = VOCABULARIES[vocabulary]
    colours = [colour(f, findings) for f in findings]
    assert set(colours) <= set(PALETTE)
    for i in range(len(findings)):
        window = colours[i:i + len(PALETTE)]
        assert len(set(window)) == len(window), (vocabulary, findings[i])

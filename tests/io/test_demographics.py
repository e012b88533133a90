"""Age, sex and view parsing: every spelling the sources use, and garbage handled with one warning."""

from __future__ import annotations

import math
import warnings

import pytest

from hybridcxr.errors import RadiographWarning
from hybridcxr.io.demographics import parse_age, parse_sex, parse_view


@pytest.mark.parametrize(
    ("value", "years"),
    [
        ("081Y", 81.0),
        ("003M", 0.25),
        ("012W", 12 * 7 / 365.25),
        ("005D", 5 / 365.25),
        ("081y", 81.0),
        ("81", 81.0),
        ("62", 62.0),
        ("62.5", 62.5),
        (" 081Y ", 81.0),
        ("50+", 50.0),
        ("090Y+", 90.0),
        (b"062Y", 62.0),
        (b"81 ", 81.0),
        (81, 81.0),
        (62.5, 62.5),
        ("0", 0.0),
        ("130", 130.0),
    ],
)
def test_parse_age_accepts_every_spelling(value: object, years: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_age(value, source="x.dcm") == pytest.approx(years)


@pytest.mark.parametrize("value", [None, "", "   ", b"", b"    ", float("nan")])
def test_parse_age_empty_is_none_silently(value: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_age(value, source="x.dcm") is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [("abc", "not an age"), ("-5", "negative"), ("999Y", "over 130"), (411, "over 130"),
     ("12Q", "not an age")],
)
def test_parse_age_garbage_warns_once_naming_the_source(value: object, problem: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert parse_age(value, source="scans/patient7.dcm") is None
    assert len(caught) == 1
    assert issubclass(caught[0].category, RadiographWarning)
    text = str(caught[0].message)
    assert "scans/patient7.dcm" in text and problem in text and str(value) in text


def test_parse_age_returns_float() -> None:
    age = parse_age("081Y")
    assert isinstance(age, float) and not math.isnan(age)


@pytest.mark.parametrize(
    ("value", "sex"),
    [("M", "M"), ("m", "M"), ("male", "M"), ("MALE", "M"), (" F ", "F"), ("female", "F"), (b"F", "F")],
)
def test_parse_sex(value: object, sex: str) -> None:
    assert parse_sex(value) == sex


@pytest.mark.parametrize("value", ["O", "", None, "X", "unknown", b"", float("nan")])
def test_parse_sex_unknown_is_none(value: object) -> None:
    assert parse_sex(value) is None


@pytest.mark.parametrize(
    ("value", "view"), [(" pa ", "PA"), ("AP", "AP"), ("ll", "LL"), ("", None), (None, None)]
)
def test_parse_view(value: object, view: str | None) -> None:
    assert parse_view(value) == view

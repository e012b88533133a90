"""Parse the demographic header fields (age, sex, view) that every source writes differently.

Values arrive as DICOM strings (``081Y``), table cells (``81``, ``50+``, NaN), bytes or numbers. Bad values
become ``None`` with one :class:`~hybridcxr.errors.RadiographWarning`; empty ones become ``None`` silently.
Warnings name the source file and the bad value (an age string is not identifying), never patient names.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

from hybridcxr.errors import RadiographWarning
from hybridcxr.io.radiograph import Sex

MAX_AGE_YEARS = 130.0
"""Ages above this are treated as garbage (e.g. ``999Y`` placeholders, NIH's ``411``)."""

_DAYS_PER_YEAR = 365.25
_UNIT_YEARS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / _DAYS_PER_YEAR, "D": 1.0 / _DAYS_PER_YEAR}
_AGE_RE = re.compile(
    r"^(?P<num>-?\d+(?:[.,]\d*)?)\s*(?P<plus>\+)?\s*"
    r"(?P<unit>Y(?:EARS?|RS?)?|M(?:ONTHS?|OS?)?|W(?:EEKS?|KS?)?|D(?:AYS?)?)?\s*\+?\s*$"
)
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}


def _as_text(value: Any) -> str | None:
    """Header value as stripped text; None where it is empty or missing (None, NaN, b"")."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", errors="replace")
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _bad_age(source: str, text: str, problem: str) -> None:
    where = f"{source}: " if source else ""
    warnings.warn(
        RadiographWarning(f"{where}age {text!r} {problem}; age set to unknown"), stacklevel=3
    )


def parse_age(value: Any, *, source: str = "") -> float | None:
    """Age in years from a DICOM AS string, a table cell or a number.

    Accepts ``nnnY/M/W/D`` (DICOM Age String), plain numbers of years (``81``, ``62.5``) and ``50+``.
    Empty values give None silently; unparseable, negative or implausible (> 130 years) ones give None
    and one :class:`RadiographWarning` naming ``source``.

    Args:
        value: the raw header or table value (str, bytes, int, float, None).
        source: the file or table the value came from, for the warning text.

    Returns:
        Age in years, or None where unknown.

    >>> parse_age("003M")
    0.25
    """
    if isinstance(value, bool):
        _bad_age(source, str(value), "is not an age")
        return None
    text = _as_text(value)
    if text is None:
        return None
    if isinstance(value, (int, float)):
        years = float(value)
    else:
        match = _AGE_RE.match(text.upper())
        if match is None:
            _bad_age(source, text, "is not an age string (expected e.g. 081Y, 003M, 81 or 50+)")
            return None
        unit = (match["unit"] or "Y")[0]
        years = float(match["num"].replace(",", ".")) * _UNIT_YEARS[unit]
    if not math.isfinite(years) or years < 0:
        _bad_age(source, text, "is negative or not finite")
        return None
    if years > MAX_AGE_YEARS:
        _bad_age(source, text, f"is over {MAX_AGE_YEARS:g} years")
        return None
    return years


def parse_sex(value: Any) -> Sex | None:
    """``"M"``, ``"F"`` or None from M/F/male/female in any case; O, empty and anything else give None.

    >>> parse_sex("female")
    'F'
    """
    text = _as_text(value)
    if text is None:
        return None
    return _SEX.get(text.upper())  # type: ignore[return-value]


def parse_view(value: Any) -> str | None:
    """The view position as written, upper-cased and stripped (``"PA"``, ``"AP"``, ``"LL"``), or None.

    >>> parse_view(" pa ")
    'PA'
    """
    text = _as_text(value)
    return text.upper() if text else None

"""Hostile files are refused by the reader itself, with hybridcxr's error naming the file and the problem."""

from __future__ import annotations

import pytest
from _hostile import write_hostile

from hybridcxr.errors import RadiographError, TooManyPixelsError
from hybridcxr.io import read_radiograph


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return folder, write_hostile(folder)


@pytest.mark.parametrize("name", ["palette-no-lut.dcm", "nan-slope.dcm", "inf-window.dcm", "rows-too-small.dcm",
                                  "float-nan.dcm", "bomb.png"])
def test_hostile_file_is_refused_naming_file_and_problem(hostile, name):
    folder, expected = hostile
    with pytest.raises(RadiographError) as caught:
        read_radiograph(folder / name)
    message = str(caught.value)
    assert name in message and expected[name] in message, message


def test_the_pixel_limit_is_checked_before_decoding_and_can_be_raised(hostile, monkeypatch):
    folder, _ = hostile
    with pytest.raises(TooManyPixelsError, match="40000 x 40000"):
        read_radiograph(folder / "bomb.png")
    monkeypatch.setenv("HYBRIDCXR_MAX_PIXELS", "100")
    small = folder / "small.png"
    from PIL import Image

    Image.new("L", (20, 20), 128).save(small)
    with pytest.raises(TooManyPixelsError, match="more than the limit of 100"):
        read_radiograph(small)
    monkeypatch.setenv("HYBRIDCXR_MAX_PIXELS", "400")
    assert read_radiograph(small).pixels.shape == (20, 20)


def test_unsigned_data_declared_signed_is_not_silent(tmp_path):
    import numpy as np
    from _hostile import _dataset

    from hybridcxr.errors import RadiographWarning

    ramp = np.linspace(0, 65535, 96 * 96).astype(np.uint16).reshape(96, 96)  # unsigned, full range
    ds = _dataset(ramp, PixelRepresentation=1)
    ds.save_as(tmp_path / "signed.dcm", enforce_file_format=True)
    with pytest.warns(RadiographWarning, match="may be unsigned"):
        read_radiograph(tmp_path / "signed.dcm")

"""Object-store layout (pure): raw keys the arrival router accepts, and the sky tiles templates are named by."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prompt_processing.model import layout
from prompt_processing.model.instruments import HSC, LATISS, LSSTCAM


def test_raw_keys_round_trip_for_every_instrument() -> None:
    for instrument, detector in ((LSSTCAM, 94), (LATISS, 0), (HSC, 103)):
        obs = layout.obs_id(instrument, "20261128", 123)
        key = layout.raw_key(instrument, "20261128", obs, detector)
        parsed = layout.parse_raw_key(key)
        assert (parsed.instrument, parsed.detector, parsed.obs_id, parsed.ext) == (instrument, detector, obs, "fits")
        assert parsed.fits_key == key
        assert layout.parse_raw_key(parsed.sidecar_key).ext == "json"
    assert layout.raw_key(LSSTCAM, "20261128", "MC_O_20261128_000123", 94) == (
        "LSSTCam/20261128/MC_O_20261128_000123/MC_O_20261128_000123_R22_S11.fits"
    )


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("LSSTCam/20261128/../../etc/passwd", "suspicious"),
        ("/LSSTCam/20261128/MC_O_20261128_000123/MC_O_20261128_000123_R22_S11.fits", "suspicious"),
        ("LSSTCam/20261128/MC_O_20261128_000123/MC_O_20261128_000124_R22_S11.fits", "is not <instrument>"),
        ("LSSTCam/20261128/MC_O_20261128_000123/MC_O_20261128_000123_R22_S11.txt", "is not <instrument>"),
        ("LSSTCam/2026112/MC_O_20261128_000123/MC_O_20261128_000123_R22_S11.fits", "is not <instrument>"),
        ("LSSTCam/20261128/MC_O_20261128_000123/MC_O_20261128_000123_R00_S11.fits", "has no detector 'R00_S11'"),
        ("DECam/20261128/MC_O_20261128_000123/MC_O_20261128_000123_R22_S11.fits", "unknown instrument 'DECam'"),
        ("lsstcam/20261128/MC_O_20261128_000123/MC_O_20261128_000123_R22_S11.fits", "unknown instrument"),
        ("LATISS/20261128/MC_O_20261128_000123/MC_O_20261128_000123_RXX_S00.fits", "is not a LATISS exposure"),
        ("garbage", "is not <instrument>"),
        ("x" * 300, "suspicious"),
    ],
)
def test_bad_keys_are_rejected_with_a_reason(key: str, reason: str) -> None:
    with pytest.raises(layout.LayoutError, match=reason):
        layout.parse_raw_key(key)


@pytest.mark.parametrize(
    ("ra_deg", "dec_deg", "tile"),
    [(10.0, -30.0, "t060-0008"), (370.0, -30.0, "t060-0008"), (-350.0, -30.0, "t060-0008"),
     (0.0, 90.0, "t179-0000"), (359.999, -90.0, "t000-0002"), (0.0, 0.0, "t090-0000")],
)  # fmt: skip
def test_sky_tile_is_a_pure_function_of_the_pointing(ra_deg: float, dec_deg: float, tile: str) -> None:
    assert layout.sky_tile(ra_deg, dec_deg) == tile


@given(st.floats(0, 359.999), st.floats(-85.0, 85.0))  # poles and RA 360 are in the table above
def test_sky_tiles_are_about_a_degree_across(ra_deg: float, dec_deg: float) -> None:
    tile = layout.sky_tile(ra_deg, dec_deg)
    assert layout.sky_tile(ra_deg + 360.0, dec_deg) == tile
    assert layout.sky_tile((ra_deg + 1.5 / math.cos(math.radians(abs(dec_deg) + 1))) % 360, dec_deg) != tile


@pytest.mark.parametrize(("ra_deg", "dec_deg"), [(0.0, 90.5), (math.nan, 0.0), (0.0, math.inf)])
def test_sky_tile_rejects_impossible_pointings(ra_deg: float, dec_deg: float) -> None:
    with pytest.raises(ValueError, match="invalid pointing"):
        layout.sky_tile(ra_deg, dec_deg)

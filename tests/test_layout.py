"""Object-store layout (pure): raw keys the arrival router accepts, and the sky tiles templates are named by."""

from __future__ import annotations

import pytest

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

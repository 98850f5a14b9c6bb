"""Detector tables and active-detector selection (pure)."""

from __future__ import annotations

import pytest

from prompt_processing.model.instruments import (
    HSC,
    LATISS,
    LSSTCAM,
    LSSTCAM_PRODUCTION_DISABLED,
    active_detector_table,
    get_instrument,
)
from prompt_processing.settings import InstrumentSettings


def test_lsstcam_has_189_science_detectors_in_obs_lsst_order() -> None:
    assert LSSTCAM.n_detectors == 189
    assert LSSTCAM.detector_name(0) == "R01_S00"
    assert LSSTCAM.detector_name(94) == "R22_S11"  # the centre of the focal plane
    assert LSSTCAM.detector_name(188) == "R43_S22"
    assert len(set(LSSTCAM.detector_names)) == 189
    assert not any(name.startswith(("R00", "R04", "R40", "R44")) for name in LSSTCAM.detector_names)


def test_production_list_leaves_172_lsstcam_detectors() -> None:
    active = LSSTCAM.active_detectors(InstrumentSettings(disabled_detectors="production"))
    assert len(active) == 172
    assert set(active).isdisjoint(LSSTCAM_PRODUCTION_DISABLED)
    assert active == tuple(sorted(set(range(189)) - set(LSSTCAM_PRODUCTION_DISABLED)))


@pytest.mark.parametrize(
    ("instrument", "disabled", "expected"),
    [
        (LSSTCAM, "none", tuple(range(189))),
        (LSSTCAM, [0, 188], tuple(range(1, 188))),
        (LATISS, "none", (0,)),
        (LATISS, [0], ()),
        (HSC, "none", tuple(range(104))),
        (HSC, [5, 5, 7], tuple(d for d in range(104) if d not in (5, 7))),
    ],
)
def test_active_detectors(instrument, disabled, expected) -> None:  # type: ignore[no-untyped-def]
    assert instrument.active_detectors(InstrumentSettings(disabled_detectors=disabled)) == expected


def test_only_detectors_then_disabled() -> None:
    config = InstrumentSettings(only_detectors=[94, 0, 90, 94], disabled_detectors="production")
    assert LSSTCAM.active_detectors(config) == (90, 94)  # 0 is disabled in production
    with pytest.raises(ValueError, match=r"got \[200\]"):
        LSSTCAM.active_detectors(InstrumentSettings(only_detectors=[200]))


@pytest.mark.parametrize(
    ("instrument", "disabled", "message"),
    [
        (LATISS, "production", "LATISS has no disabled-detector list 'production'"),
        (LSSTCAM, [189], r"LSSTCam has detectors 0..188; got \[189\]"),
        (HSC, [-1], r"got \[-1\]"),
    ],
)
def test_bad_detector_configuration_fails_loudly(instrument, disabled, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        instrument.active_detectors(InstrumentSettings(disabled_detectors=disabled))


def test_table_uses_canonical_names_and_skips_disabled_instruments() -> None:
    table = active_detector_table(
        {"lsstcam": InstrumentSettings(disabled_detectors="production"), "HSC": InstrumentSettings(enabled=False)}
    )
    assert list(table) == ["LSSTCam"]
    assert len(table["LSSTCam"]) == 172
    with pytest.raises(ValueError, match="unknown instrument 'DECam'"):
        active_detector_table({"DECam": InstrumentSettings()})


def test_lookup_is_case_insensitive() -> None:
    assert get_instrument("latiss") is LATISS
    assert get_instrument("LsStCaM") is LSSTCAM
    assert get_instrument("nope") is None

"""Where a detector looks: focal-plane placement and predicted sky regions (pure geometry)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lsst.sphgeom import LonLat, UnitVector3d

from prompt_processing.model import sky
from prompt_processing.model.instruments import HSC, LATISS, LSSTCAM, Instrument


def _separation_deg(a: tuple[float, float], b: tuple[float, float]) -> float:
    va, vb = (UnitVector3d(LonLat.fromDegrees(*p)) for p in (a, b))
    return math.degrees(math.acos(max(-1.0, min(1.0, va.dot(vb)))))


def test_lsstcam_centre_detector_sits_on_the_boresight_and_corner_rafts_are_far_out() -> None:
    centre = LSSTCAM.detector_names.index("R22_S11")
    assert sky.placement(LSSTCAM, centre) == sky.DetectorPlacement(0.0, 0.0, pytest.approx(0.2276, abs=1e-3),
                                                                   pytest.approx(0.2276, abs=1e-3))  # fmt: skip
    far = sky.placement(LSSTCAM, LSSTCAM.detector_names.index("R41_S20"))
    assert math.hypot(far.x_deg, far.y_deg) > 1.4
    # The outer corners of the corner rafts' outer sensors: a little beyond the ~1.75 deg of the round field.
    assert 1.9 < sky.field_radius_deg(LSSTCAM) < 2.1


def test_a_detector_outside_the_camera_is_refused() -> None:
    with pytest.raises(ValueError, match=r"LATISS has detectors 0\.\.0, not 1"):
        sky.placement(LATISS, 1)


@given(ra=st.floats(0, 359.99), dec=st.floats(-85, 85), angle=st.floats(-180, 180),
       detector=st.integers(0, LSSTCAM.n_detectors - 1))  # fmt: skip
def test_region_holds_the_detector_centre_and_rotates_with_the_camera(
    ra: float, dec: float, angle: float, detector: int
) -> None:
    centre = sky.detector_centre(LSSTCAM, detector, ra, dec, angle)
    region = sky.detector_region(LSSTCAM, detector, ra, dec, angle)
    assert region.contains(UnitVector3d(LonLat.fromDegrees(*centre)))
    # The centre is as far from the boresight whatever the rotation, and about where the focal plane says.
    where = sky.placement(LSSTCAM, detector)
    assert _separation_deg(centre, (ra, dec)) == pytest.approx(math.hypot(where.x_deg, where.y_deg), abs=0.01)


def test_padding_grows_the_region_by_the_margin() -> None:
    plain = sky.detector_region(LATISS, 0, 10.0, -30.0, 0.0)
    padded = sky.detector_region(LATISS, 0, 10.0, -30.0, 0.0, padding_arcsec=60.0)
    assert padded.contains(plain)
    corners = sky.detector_corners(LATISS, 0, 10.0, -30.0, 0.0, padding_arcsec=60.0)
    inner = sky.detector_corners(LATISS, 0, 10.0, -30.0, 0.0)
    assert _separation_deg(corners[0], inner[0]) == pytest.approx(math.sqrt(2) * 60 / 3600, rel=0.01)


def test_rotation_by_90_degrees_swaps_an_off_axis_detector_to_the_other_axis() -> None:
    detector = LSSTCAM.detector_names.index("R32_S11")  # one raft along +y (north at angle 0)
    north = sky.detector_centre(LSSTCAM, detector, 0.0, 0.0, 0.0)
    east = sky.detector_centre(LSSTCAM, detector, 0.0, 0.0, 90.0)
    assert north[0] == pytest.approx(0.0, abs=1e-6) and north[1] == pytest.approx(0.7056, abs=1e-3)
    assert abs(east[1]) < 1e-6 and min(east[0], 360 - east[0]) == pytest.approx(0.7056, abs=1e-3)


def test_trixels_overlapping_a_region_include_the_one_of_its_centre() -> None:
    for instrument, detector in ((LSSTCAM, 94), (HSC, 50), (LATISS, 0)):
        region = sky.detector_region(instrument, detector, 150.0, 2.0, 30.0, padding_arcsec=30.0)
        overlapping = sky.htm_overlapping(region)
        assert sky.htm_index(*sky.detector_centre(instrument, detector, 150.0, 2.0, 30.0)) in overlapping
        assert 1 <= len(overlapping) <= 12  # a detector is smaller than a ~0.5 deg trixel


@given(st.sampled_from([(LSSTCAM, 94), (LSSTCAM, 0), (LATISS, 0), (HSC, 60)]), st.floats(0, 360), st.floats(-80, 80),
       st.floats(-180, 180))  # fmt: skip
def test_the_nominal_wcs_puts_the_image_corners_on_the_region_corners(
    which: tuple[Instrument, int], ra: float, dec: float, angle: float
) -> None:
    instrument, detector = which
    placed = sky.placement(instrument, detector)
    columns = 512  # HSC: 2048 x 4176 sensors, so 512 x 1044 exactly
    rows = round(columns * placed.height_deg / placed.width_deg)
    wcs = sky.detector_wcs(instrument, detector, ra, dec, angle, (rows, columns))
    edges = [(-0.5, -0.5), (columns - 0.5, -0.5), (columns - 0.5, rows - 0.5), (-0.5, rows - 0.5)]  # pixel corners
    scale_arcsec = placed.width_deg / columns * 3600
    for (x, y), (corner_ra, corner_dec) in zip(edges, sky.detector_corners(instrument, detector, ra, dec, angle),
                                               strict=True):  # fmt: skip
        got_ra, got_dec = wcs.pixel_to_world_values(x, y)
        a, b = UnitVector3d(LonLat.fromDegrees(float(got_ra), float(got_dec))), UnitVector3d(
            LonLat.fromDegrees(corner_ra, corner_dec))
        assert math.degrees(math.acos(min(1.0, a.dot(b)))) * 3600 < 0.01 * scale_arcsec

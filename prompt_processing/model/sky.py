"""Where a detector looks: its place in the focal plane and its predicted region on the sky.

Pure functions on ``lsst.sphgeom`` geometry. Preload uses ``detector_region`` to ask the central
Butler for the templates and reference-catalogue shards a visit-detector will need, before its
image exists; raw ingest uses it for the visit's ``visit_detector_region``.

The focal planes are nominal: LSSTCam's 21 rafts of 3 x 3 sensors on a 127 mm raft pitch and a
42.25 mm sensor pitch at 0.2 arcsec per 10 um pixel; LATISS one 4k sensor at 0.1 arcsec/px; HSC's
104 CCDs as a 13 x 8 grid of 2k x 4k sensors at 0.168 arcsec/px (its real layout is round: the
grid is an approximation good to a detector's width, which the padding covers). No distortion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from lsst.sphgeom import ConvexPolygon, HtmPixelization, LonLat, Region, UnitVector3d

from prompt_processing.model.instruments import Instrument

REFCAT_HTM_LEVEL = 7
"""Sky index of reference-catalogue shards (Rubin's refcats use HTM level 7, ~0.3 deg2)."""
TEMPLATE_HTM_LEVEL = 9
"""Sky index of templates: each covers a level-9 trixel (~0.1 deg across) on its own TAN grid."""


@dataclass(frozen=True)
class DetectorPlacement:
    """A detector's centre in the focal plane (deg from the boresight; x along rows, y along columns) and size."""

    x_deg: float
    y_deg: float
    width_deg: float
    height_deg: float


_LSSTCAM_SENSOR_DEG = 4096 * 0.2 / 3600
_LSSTCAM_SENSOR_PITCH_DEG = 42.25 * 20.0 / 3600  # 20 arcsec per mm
_LSSTCAM_RAFT_PITCH_DEG = 127.0 * 20.0 / 3600


def placement(instrument: Instrument, detector: int) -> DetectorPlacement:
    """The nominal placement of ``detector``; ValueError for a detector the instrument does not have."""
    if not 0 <= detector < instrument.n_detectors:
        raise ValueError(f"{instrument.name} has detectors 0..{instrument.n_detectors - 1}, not {detector}")
    if instrument.name == "LSSTCam":
        name = instrument.detector_name(detector)  # R<row><col>_S<row><col>
        raft_row, raft_col, sensor_row, sensor_col = int(name[1]), int(name[2]), int(name[5]), int(name[6])
        x = (raft_col - 2) * _LSSTCAM_RAFT_PITCH_DEG + (sensor_col - 1) * _LSSTCAM_SENSOR_PITCH_DEG
        y = (raft_row - 2) * _LSSTCAM_RAFT_PITCH_DEG + (sensor_row - 1) * _LSSTCAM_SENSOR_PITCH_DEG
        return DetectorPlacement(x, y, _LSSTCAM_SENSOR_DEG, _LSSTCAM_SENSOR_DEG)
    if instrument.name == "HSC":
        width, height = 2048 * 0.168 / 3600, 4176 * 0.168 / 3600
        column, row = detector % 13, detector // 13
        return DetectorPlacement((column - 6) * width * 1.05, (row - 3.5) * height * 1.05, width, height)
    side = 4096 * 0.1 / 3600  # LATISS, and any single-sensor camera
    return DetectorPlacement(0.0, 0.0, side, side)


def detector_corners(
    instrument: Instrument, detector: int, ra_deg: float, dec_deg: float, camera_angle_deg: float,
    padding_arcsec: float = 0.0,
) -> list[tuple[float, float]]:  # fmt: skip
    """The four corners (ra, dec in deg) of ``detector`` for a boresight at (ra, dec) and the camera
    rotated by ``camera_angle_deg`` (east of north), each side pushed out by ``padding_arcsec``."""
    where = placement(instrument, detector)
    pad = padding_arcsec / 3600
    half_w, half_h = where.width_deg / 2 + pad, where.height_deg / 2 + pad
    theta = math.radians(camera_angle_deg)
    centre = _unit(ra_deg, dec_deg)
    east = np.array([-math.sin(math.radians(ra_deg)), math.cos(math.radians(ra_deg)), 0.0])
    north = np.cross(centre, east)
    corners = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        x, y = where.x_deg + sx * half_w, where.y_deg + sy * half_h
        xi = math.radians(x * math.cos(theta) - y * math.sin(theta))
        eta = math.radians(x * math.sin(theta) + y * math.cos(theta))
        point = centre + xi * east + eta * north  # gnomonic: the tangent plane back onto the sphere
        lonlat = LonLat(UnitVector3d(*point))
        corners.append((lonlat.getLon().asDegrees() % 360.0, lonlat.getLat().asDegrees()))
    return corners


def detector_region(
    instrument: Instrument, detector: int, ra_deg: float, dec_deg: float, camera_angle_deg: float,
    padding_arcsec: float = 0.0,
) -> ConvexPolygon:  # fmt: skip
    """The predicted sky region of ``detector`` (see ``detector_corners``), as a convex polygon."""
    corners = detector_corners(instrument, detector, ra_deg, dec_deg, camera_angle_deg, padding_arcsec)
    return ConvexPolygon([UnitVector3d(LonLat.fromDegrees(ra, dec)) for ra, dec in corners])


def detector_centre(
    instrument: Instrument, detector: int, ra_deg: float, dec_deg: float, camera_angle_deg: float
) -> tuple[float, float]:
    """(ra, dec) in deg of the detector's centre."""
    corners = detector_corners(instrument, detector, ra_deg, dec_deg, camera_angle_deg)
    vector = sum((_unit(ra, dec) for ra, dec in corners), np.zeros(3))
    lonlat = LonLat(UnitVector3d(*vector))
    return lonlat.getLon().asDegrees() % 360.0, lonlat.getLat().asDegrees()


def detector_wcs(
    instrument: Instrument, detector: int, ra_deg: float, dec_deg: float, camera_angle_deg: float,
    shape_px: tuple[int, int],
) -> WCS:  # fmt: skip
    """The nominal TAN WCS of ``detector``'s image of ``shape_px`` (rows, columns) for this pointing.

    The tangent point is the boresight; pixels are square, the detector's width over its columns;
    pixel x (columns) runs along the focal plane's x, rotated by ``camera_angle_deg`` east of north
    like ``detector_corners``, whose corners it reproduces to within half a pixel.
    """
    where = placement(instrument, detector)
    rows, columns = shape_px
    scale_deg = pixel_scale_arcsec(instrument, detector, columns) / 3600
    theta = math.radians(camera_angle_deg)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [ra_deg % 360.0, dec_deg]
    # FITS pixels are 1-based: the image's centre is ((columns + 1) / 2, (rows + 1) / 2).
    wcs.wcs.crpix = [(columns + 1) / 2 - where.x_deg / scale_deg, (rows + 1) / 2 - where.y_deg / scale_deg]
    wcs.wcs.cd = scale_deg * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    wcs.pixel_shape = (columns, rows)
    return wcs


def pixel_scale_arcsec(instrument: Instrument, detector: int, columns: int) -> float:
    """The pixel scale of an image of ``detector`` with ``columns`` columns (``detector_wcs``'s)."""
    return placement(instrument, detector).width_deg * 3600 / columns


def field_radius_deg(instrument: Instrument) -> float:
    """Distance from the boresight to the farthest detector corner."""
    return max(
        math.hypot(abs(p.x_deg) + p.width_deg / 2, abs(p.y_deg) + p.height_deg / 2)
        for p in (placement(instrument, d) for d in range(instrument.n_detectors))
    )


def htm_index(ra_deg: float, dec_deg: float, level: int = REFCAT_HTM_LEVEL) -> int:
    """The HTM trixel containing (ra, dec) at ``level``."""
    return int(HtmPixelization(level).index(UnitVector3d(LonLat.fromDegrees(ra_deg, dec_deg))))


def htm_overlapping(region: Region, level: int = REFCAT_HTM_LEVEL) -> list[int]:
    """The HTM trixels at ``level`` that may overlap ``region`` (a superset, as sphgeom's envelope is)."""
    ranges = HtmPixelization(level).envelope(region)
    return [index for begin, end in ranges for index in range(begin, end)]


def _unit(ra_deg: float, dec_deg: float) -> np.ndarray:
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    return np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])

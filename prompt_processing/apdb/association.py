"""DiaSources from a difference image's detections, and their association with the APDB's DiaObjects.

``dia_sources`` turns a visit-detector's DIA catalogue into DiaSource rows (the APDB's columns,
positions through the detector's WCS, fluxes in nJy). ``associate`` then joins each DiaSource to
the nearest DiaObject within the radius, one DiaSource per DiaObject per visit (closest pairs first),
and starts a DiaObject for each DiaSource left over. Both are pure: ``Apdb.store`` writes what they
return, in one transaction, with the visit's time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sep
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from prompt_processing.apdb.ids import MAX_SOURCES, DiaSourceKey, dia_source_id
from prompt_processing.imaging.dia import DiaCatalogue, DiaMeasurements

BANDS = "ugrizy"


@dataclass(frozen=True)
class VisitDetector:
    """What a DiaSource row says about where and when it was seen."""

    instrument: str
    day_obs: int
    seq_num: int
    visit: int
    detector: int
    band: str
    midpoint_mjd_tai: float
    exposure_time_s: float


@dataclass(frozen=True)
class Association:
    """What ``Apdb.store`` writes for one visit-detector: DiaObjects (new ones, and new versions of the
    ones that gained a DiaSource) and the DiaSources, each with its ``diaObjectId``."""

    objects: pd.DataFrame
    sources: pd.DataFrame
    n_new_objects: int


def dia_sources(
    where: VisitDetector, found: DiaCatalogue, wcs: WCS, *, flux_njy_per_e: float, processed_mjd_tai: float,
    aperture_radius_px: float, cutout_size_px: int, psf_model_px2: tuple[float, float, float],
) -> pd.DataFrame:  # fmt: skip
    """One DiaSource row per catalogue row (index = its place in the catalogue, which names its id).

    ``flux_njy_per_e`` converts the catalogue's fluxes (e-) to nJy (the zero point); pixel (x, y) are
    0-based like the catalogue's; moments and dipole lengths go to arcsec through the WCS's local
    scale, dipole angles are bearings (east of north) from the negative to the positive lobe. The
    PSF's moments (``ixxPSF``...) are the visit image's PSF model, ``psf_model_px2`` (xx, yy, xy).
    ``psfFlux`` is the PSF fit's, ``apFlux`` the aperture's; ``snr`` the PSF fit's. ValueError if the
    catalogue has more rows than an id can number.
    """
    catalogue, shapes = found.sources, found.measurements
    n = len(catalogue)
    if n > MAX_SOURCES:
        raise ValueError(f"{n} DiaSources in one visit-detector: more than the {MAX_SOURCES} an id can number")
    ids = [dia_source_id(DiaSourceKey(where.instrument, where.day_obs, where.seq_num, where.detector, i))
           for i in range(n)]  # fmt: skip
    ra_deg, dec_deg = wcs.pixel_to_world_values(catalogue.x_px, catalogue.y_px) if n else (np.zeros(0), np.zeros(0))
    flux_njy = catalogue.flux_e * flux_njy_per_e
    flux_err_njy = catalogue.flux_err_e * flux_njy_per_e
    truncated = (catalogue.aperture_flags & sep.APER_TRUNC) != 0
    masked = (catalogue.aperture_flags & sep.APER_HASMASKED) != 0
    jacobian = wcs.pixel_scale_matrix * 3600.0  # arcsec per px, (ra, dec) by (x, y)
    ixx, iyy, ixy = _to_sky(shapes.ixx_px2, shapes.iyy_px2, shapes.ixy_px2, jacobian)
    model_xx, model_yy, model_xy = psf_model_px2
    psf_xx, psf_yy, psf_xy = _to_sky(np.full(n, model_xx), np.full(n, model_yy), np.full(n, model_xy), jacobian)
    psf_njy, psf_err_njy = shapes.psf_flux_e * flux_njy_per_e, shapes.psf_flux_err_e * flux_njy_per_e
    psf_snr = np.divide(shapes.psf_flux_e, shapes.psf_flux_err_e, out=np.full(n, np.nan),
                        where=shapes.psf_flux_err_e > 0)  # fmt: skip
    length_arcsec, angle_deg = _dipole_geometry(shapes, wcs, jacobian)
    return pd.DataFrame({
        "diaSourceId": np.array(ids, dtype=np.int64),
        "visit": np.int64(where.visit), "detector": np.int16(where.detector), "band": where.band,
        "midpointMjdTai": where.midpoint_mjd_tai, "exposureTime": where.exposure_time_s,
        "ra": np.mod(np.asarray(ra_deg, dtype=np.float64), 360.0), "dec": np.asarray(dec_deg, dtype=np.float64),
        "x": catalogue.x_px.astype(np.float32), "y": catalogue.y_px.astype(np.float32),
        "apFlux": flux_njy.astype(np.float32), "apFluxErr": flux_err_njy.astype(np.float32),
        "apFlux_flag": truncated | masked, "apFlux_flag_apertureTruncated": truncated,
        "psfFlux": psf_njy.astype(np.float32), "psfFluxErr": psf_err_njy.astype(np.float32),
        "psfFlux_flag": shapes.psf_flag.astype(bool), "psfNdata": np.int32(round(np.pi * aperture_radius_px**2)),
        "snr": psf_snr.astype(np.float32), "isNegative": catalogue.flux_e < 0,
        "ixx": ixx.astype(np.float32), "iyy": iyy.astype(np.float32), "ixy": ixy.astype(np.float32),
        "ixxPSF": psf_xx.astype(np.float32), "iyyPSF": psf_yy.astype(np.float32), "ixyPSF": psf_xy.astype(np.float32),
        "shape_flag": shapes.shape_flag.astype(bool),
        "isDipole": shapes.is_dipole.astype(bool), "dipoleFitAttempted": shapes.is_dipole.astype(bool),
        "dipoleMeanFlux": (shapes.dipole_mean_flux_e * flux_njy_per_e).astype(np.float32),
        "dipoleFluxDiff": (shapes.dipole_flux_diff_e * flux_njy_per_e).astype(np.float32),
        "dipoleLength": length_arcsec.astype(np.float32), "dipoleAngle": angle_deg.astype(np.float32),
        "trailNdata": np.int32(0), "dipoleNdata": np.where(shapes.is_dipole, 2 * round(np.pi * aperture_radius_px**2),
                                                           0).astype(np.int32),
        "pixelFlags_edge": truncated, "pixelFlags_bad": masked,
        "timeProcessedMjdTai": processed_mjd_tai, "bboxSize": np.int64(cutout_size_px),
    })  # fmt: skip


def _to_sky(xx: np.ndarray, yy: np.ndarray, xy: np.ndarray,
            jacobian: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Second moments in px^2 as arcsec^2 along (ra, dec): J M J^T (NaN stays NaN)."""
    (a, b), (c, d) = jacobian
    return (a * a * xx + 2 * a * b * xy + b * b * yy, c * c * xx + 2 * c * d * xy + d * d * yy,
            a * c * xx + (a * d + b * c) * xy + b * d * yy)  # fmt: skip


def _dipole_geometry(shapes: DiaMeasurements, wcs: WCS, jacobian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each dipole's lobe separation (arcsec) and bearing from its negative to its positive lobe (deg east
    of north); NaN for sources that are not dipoles."""
    length, angle = np.full(len(shapes.is_dipole), np.nan), np.full(len(shapes.is_dipole), np.nan)
    dipole = np.flatnonzero(shapes.is_dipole)
    if len(dipole):
        offset_px = np.stack([shapes.positive_x_px[dipole] - shapes.negative_x_px[dipole],
                              shapes.positive_y_px[dipole] - shapes.negative_y_px[dipole]])  # fmt: skip
        length[dipole] = np.hypot(*(jacobian @ offset_px))
        positive = wcs.pixel_to_world(shapes.positive_x_px[dipole], shapes.positive_y_px[dipole])
        negative = wcs.pixel_to_world(shapes.negative_x_px[dipole], shapes.negative_y_px[dipole])
        angle[dipole] = np.atleast_1d(negative.position_angle(positive).deg)
    return length, angle


def associate(sources: pd.DataFrame, objects: pd.DataFrame, *, radius_arcsec: float) -> Association:
    """Join ``sources`` (``dia_sources`` rows of one visit-detector) to ``objects`` (the APDB's current
    DiaObjects around it). Returns the DiaObjects to store and the sources with ``diaObjectId`` set."""
    sources = sources.copy()
    object_of = np.full(len(sources), -1, dtype=np.int64)  # row in ``objects``, or -1 for a new DiaObject
    if len(sources) and len(objects):
        object_of = _match(sources, objects, radius_arcsec)
    matched = object_of >= 0
    sources["diaObjectId"] = np.where(matched, objects["diaObjectId"].to_numpy()[np.maximum(object_of, 0)]
                                      if len(objects) else -1, sources["diaSourceId"].to_numpy())  # fmt: skip
    # Rows as records, never as a Series: a row of mixed columns turns ids (> 2**53) into floats.
    object_rows, source_rows = objects.to_dict("records"), sources.to_dict("records")
    updated = [_updated(object_rows[row], source_rows[i]) for i, row in enumerate(object_of) if row >= 0]
    new = [_new(source_rows[i]) for i in np.flatnonzero(~matched)]
    frame = pd.DataFrame(updated + new)
    if len(frame):
        frame = frame.astype({"diaObjectId": np.int64, "nDiaSources": np.int64,
                              **{f"{b}_psfFluxNdata": np.int64 for b in BANDS}})  # fmt: skip
    return Association(objects=frame, sources=sources, n_new_objects=len(new))


def _match(sources: pd.DataFrame, objects: pd.DataFrame, radius_arcsec: float) -> np.ndarray:
    """For each source, the row of the DiaObject it joins (-1: none), closest pairs first, one-to-one."""
    chord = 2 * np.sin(np.radians(radius_arcsec / 3600) / 2)
    tree = cKDTree(_unit(objects["ra"].to_numpy(), objects["dec"].to_numpy()))
    distances = tree.sparse_distance_matrix(
        cKDTree(_unit(sources["ra"].to_numpy(), sources["dec"].to_numpy())), chord, output_type="ndarray")
    object_of = np.full(len(sources), -1, dtype=np.int64)
    taken: set[int] = set()
    for pair in np.sort(distances, order="v"):
        obj, src = int(pair["i"]), int(pair["j"])
        if object_of[src] < 0 and obj not in taken:
            object_of[src] = obj
            taken.add(obj)
    return object_of


def _updated(current: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The next version of ``current`` with ``source`` joined: position and band flux means updated."""
    row = dict(current)
    n = int(row["nDiaSources"])
    mean = (_unit(np.array([row["ra"]]), np.array([row["dec"]]))[0] * n
            + _unit(np.array([source["ra"]]), np.array([source["dec"]]))[0])  # fmt: skip
    row["ra"], row["dec"] = _lonlat(mean)
    band = str(source["band"])
    k = int(row.get(f"{band}_psfFluxNdata") or 0)
    previous = row.get(f"{band}_psfFluxMean")
    previous = 0.0 if previous is None or not np.isfinite(previous) else float(previous)
    row[f"{band}_psfFluxMean"] = (previous * k + float(source["psfFlux"])) / (k + 1)
    row[f"{band}_psfFluxNdata"] = k + 1
    row["nDiaSources"] = n + 1
    row["lastDiaSourceMjdTai"] = row["validityStartMjdTai"] = float(source["midpointMjdTai"])
    row["validityEndMjdTai"] = None
    return row


def _new(source: dict[str, Any]) -> dict[str, Any]:
    mjd, band = float(source["midpointMjdTai"]), str(source["band"])
    return {
        "diaObjectId": int(source["diaSourceId"]), "ra": float(source["ra"]), "dec": float(source["dec"]),
        "nDiaSources": 1, "validityStartMjdTai": mjd, "firstDiaSourceMjdTai": mjd, "lastDiaSourceMjdTai": mjd,
        **{f"{b}_psfFluxNdata": int(b == band) for b in BANDS}, f"{band}_psfFluxMean": float(source["psfFlux"]),
    }  # fmt: skip


def _unit(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _lonlat(vector: np.ndarray) -> tuple[float, float]:
    x, y, z = vector / np.linalg.norm(vector)
    return float(np.degrees(np.arctan2(y, x)) % 360.0), float(np.degrees(np.arcsin(z)))

"""Image calibration against a reference catalogue: the PSF's width, the astrometric fit, the zero point.

Pure functions on arrays and astropy WCSs, no I/O. ``psf_fwhm_px`` measures the seeing from bright
stars (the ratio of their fluxes in two apertures, for a Gaussian PSF), ``psf_model_px2`` the PSF
model from their adaptive second moments (an elliptical Gaussian); ``fit_wcs`` finds the
detected stars' reference counterparts (a pointing offset searched first, then nearest neighbours)
and fits a TAN WCS to them (``astropy.wcs.utils.fit_wcs_from_points``), twice; ``fit_zero_point``
is the clipped median of the matched stars' reference magnitude against their count rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sep
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from astropy.wcs.utils import fit_wcs_from_points
from scipy.optimize import brentq
from scipy.spatial import cKDTree

from prompt_processing.imaging.catalogue import Catalogue, sanitised, second_moments
from prompt_processing.imaging.psf import FWHM_PER_SIGMA, FloatImage

AB_NJY_ZERO_POINT = 31.4  # m_AB = 31.4 - 2.5 log10(f / nJy)
_INNER_PX, _OUTER_PX = 2.5, 8.0
_MIN_SIGMA_PX, _MAX_SIGMA_PX = 0.2, 20.0


class CalibrationError(ValueError):
    """Too little to calibrate with (too few stars, no match to the reference catalogue)."""


@dataclass(frozen=True)
class AstrometricFit:
    """The fitted WCS, how many stars it rests on, their rms distance to the reference (arcsec), and the
    pointing offset found (arcsec, along the image's x and y)."""

    wcs: WCS
    n_matched: int
    rms_arcsec: float
    offset_arcsec: tuple[float, float]
    star_index: np.ndarray  # matched rows of the stars' catalogue
    ref_index: np.ndarray  # and of the reference catalogue, pair by pair


def psf_stars(stars: Catalogue, *, min_snr: float = 30.0, max_stars: int = 200) -> np.ndarray:
    """Indices of the brightest (S/N >= ``min_snr``) stars with no other source within 16 px, brightest
    first, at most ``max_stars``: the stars the PSF is measured on. CalibrationError with fewer than 5."""
    bright = np.flatnonzero(stars.snr >= min_snr)
    if len(bright) > 1:
        tree = cKDTree(np.column_stack([stars.x_px, stars.y_px]))
        pairs = tree.query_ball_point(np.column_stack([stars.x_px[bright], stars.y_px[bright]]), 2 * _OUTER_PX)
        bright = np.array([b for b, near in zip(bright, pairs, strict=True) if len(near) == 1], dtype=int)
    bright = bright[np.argsort(-stars.snr[bright])][:max_stars]
    if len(bright) < 5:
        raise CalibrationError(f"{len(bright)} bright isolated stars: too few to measure the PSF")
    return bright


def psf_fwhm_px(image: FloatImage, stars: Catalogue, *, min_snr: float = 30.0, max_stars: int = 200) -> float:
    """The seeing FWHM (px) from the brightest isolated stars of ``stars`` (``psf_stars``) on the
    background-subtracted ``image``: the median over stars of the Gaussian width whose 2.5 px / 8 px
    aperture flux ratio matches theirs. CalibrationError with fewer than 5 usable stars."""
    bright = psf_stars(stars, min_snr=min_snr, max_stars=max_stars)
    data, mask = sanitised(image)  # saturated or dead pixels: a star touching one is not measured
    x, y = stars.x_px[bright], stars.y_px[bright]
    inner, _, flag_in = sep.sum_circle(data, x, y, _INNER_PX, mask=mask)
    outer, _, flag_out = sep.sum_circle(data, x, y, _OUTER_PX, mask=mask)
    good = (flag_in == 0) & (flag_out == 0) & (outer > 0)
    ratios = inner[good] / outer[good]
    # Ratios a Gaussian of 0.2-20 px sigma can give (a blend or a cosmic ray may not).
    ratios = ratios[(ratios < _enclosed_ratio(_MIN_SIGMA_PX)) & (ratios > _enclosed_ratio(_MAX_SIGMA_PX))]
    sigmas = [_sigma_for_ratio(float(r)) for r in ratios]
    if len(sigmas) < 5:
        raise CalibrationError(f"{len(sigmas)} stars with whole, unmasked, star-like apertures: too few to "
                               f"measure the PSF")  # fmt: skip
    return float(np.median(sigmas)) * FWHM_PER_SIGMA


def psf_model_px2(image: FloatImage, stars: Catalogue, fwhm_px: float) -> tuple[float, float, float]:
    """The PSF model: the elliptical Gaussian (covariance xx, yy, xy in px^2) whose adaptive second moments
    are the median of those of the PSF stars (``psf_stars``) with whole, unmasked stamps, weighted by a
    Gaussian of ``fwhm_px``. CalibrationError with fewer than 5 such stars."""
    bright = psf_stars(stars)
    ixx, iyy, ixy, flag = second_moments(image, stars.x_px[bright], stars.y_px[bright], np.ones(len(bright)),
                                         sigma_px=fwhm_px / FWHM_PER_SIGMA)  # fmt: skip
    if int((~flag).sum()) < 5:
        raise CalibrationError(f"{int((~flag).sum())} stars with measurable shapes: too few for the PSF model")
    return float(np.median(ixx[~flag])), float(np.median(iyy[~flag])), float(np.median(ixy[~flag]))


def _enclosed_ratio(sigma_px: float) -> float:
    """A Gaussian PSF's flux within the inner aperture over that within the outer."""
    inner = 1 - math.exp(-(_INNER_PX**2) / (2 * sigma_px**2))
    return inner / (1 - math.exp(-(_OUTER_PX**2) / (2 * sigma_px**2)))


def _sigma_for_ratio(ratio: float) -> float:
    return float(brentq(lambda s: _enclosed_ratio(s) - ratio, _MIN_SIGMA_PX, _MAX_SIGMA_PX))


def fit_wcs(
    stars: Catalogue, ref_ra_deg: np.ndarray, ref_dec_deg: np.ndarray, initial: WCS, *, search_arcsec: float = 6.0,
    min_snr: float = 10.0, min_matches: int = 10,
) -> AstrometricFit:  # fmt: skip
    """A TAN WCS fitted to the stars of ``stars`` (S/N >= ``min_snr``) matched to the reference positions,
    starting from ``initial`` (the pointing); CalibrationError with fewer than ``min_matches`` matches."""
    scale_arcsec = float(np.sqrt(abs(np.linalg.det(initial.pixel_scale_matrix)))) * 3600
    keep = stars.snr >= min_snr
    x, y = stars.x_px[keep], stars.y_px[keep]
    if len(x) < min_matches or len(ref_ra_deg) < min_matches:
        raise CalibrationError(f"astrometry: {len(x)} stars with S/N >= {min_snr}, {len(ref_ra_deg)} reference "
                               f"stars: fewer than {min_matches}")  # fmt: skip
    rx, ry = (np.asarray(v) for v in initial.world_to_pixel_values(ref_ra_deg, ref_dec_deg))
    dx, dy = _offset(x, y, rx, ry, search_arcsec / scale_arcsec)
    wcs = initial
    match_px = max(1.5, 1.0 / scale_arcsec)
    for shift in ((dx, dy), (0.0, 0.0)):  # the first pass from the shifted pointing, the second from the fit
        if wcs is not initial:
            rx, ry = (np.asarray(v) for v in wcs.world_to_pixel_values(ref_ra_deg, ref_dec_deg))
        star, ref = _nearest_pairs(x, y, rx + shift[0], ry + shift[1], match_px)
        if len(star) < min_matches:
            raise CalibrationError(f"astrometry: {len(star)} stars matched the reference catalogue "
                                   f"(need {min_matches})")  # fmt: skip
        world = SkyCoord(ref_ra_deg[ref], ref_dec_deg[ref], unit="deg")
        # Tangent point at the matched stars' centre: the boresight (the initial WCS's) may lie far off an
        # outer detector, where a fit of the reference pixel and CD matrix is ill-conditioned.
        wcs = fit_wcs_from_points((x[star], y[star]), world, proj_point="center", projection="TAN")
        wcs.pixel_shape = initial.pixel_shape
    fitted = wcs.pixel_to_world(x[star], y[star])
    rms = float(np.sqrt(np.mean(fitted.separation(world).arcsec ** 2)))
    return AstrometricFit(wcs, len(star), rms, (float(dx * scale_arcsec), float(dy * scale_arcsec)),
                          np.flatnonzero(keep)[star], ref)  # fmt: skip


def _offset(x: np.ndarray, y: np.ndarray, rx: np.ndarray, ry: np.ndarray, search_px: float) -> tuple[float, float]:
    """The shift (px) taking the reference positions onto the stars: the peak of the histogram of the
    differences of all pairs closer than ``search_px``, refined by their median around it."""
    tree = cKDTree(np.column_stack([rx, ry]))
    neighbours = tree.query_ball_point(np.column_stack([x, y]), search_px)
    ddx = np.array([x[i] - rx[j] for i, near in enumerate(neighbours) for j in near])
    ddy = np.array([y[i] - ry[j] for i, near in enumerate(neighbours) for j in near])
    if len(ddx) == 0:
        return 0.0, 0.0
    bins = max(int(2 * search_px), 1)
    counts, xedges, yedges = np.histogram2d(ddx, ddy, bins=bins, range=[[-search_px, search_px]] * 2)
    i, j = np.unravel_index(np.argmax(counts), counts.shape)
    cx, cy = (xedges[i] + xedges[i + 1]) / 2, (yedges[j] + yedges[j + 1]) / 2
    near = np.hypot(ddx - cx, ddy - cy) < max(1.5, (xedges[1] - xedges[0]))
    return float(np.median(ddx[near])), float(np.median(ddy[near]))


def _nearest_pairs(x: np.ndarray, y: np.ndarray, rx: np.ndarray, ry: np.ndarray,
                   radius_px: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Indices (star, reference) of mutual nearest neighbours closer than ``radius_px``."""
    distance, ref = cKDTree(np.column_stack([rx, ry])).query(np.column_stack([x, y]), distance_upper_bound=radius_px)
    found = np.isfinite(distance)
    star, ref = np.flatnonzero(found), ref[found]
    _, back = cKDTree(np.column_stack([x, y])).query(np.column_stack([rx[ref], ry[ref]]))
    mutual = back == star
    return star[mutual], ref[mutual]


def fit_zero_point(flux_e: np.ndarray, exposure_s: float, ref_flux_njy: np.ndarray, *,
                   min_stars: int = 5) -> tuple[float, float, int]:  # fmt: skip
    """(zero point: the AB magnitude of 1 e-/s, its rms scatter, stars used), 3-sigma clipped.
    CalibrationError with fewer than ``min_stars`` usable stars."""
    good = (flux_e > 0) & (ref_flux_njy > 0)
    zp = AB_NJY_ZERO_POINT - 2.5 * np.log10(ref_flux_njy[good]) + 2.5 * np.log10(flux_e[good] / exposure_s)
    for _ in range(3):
        if len(zp) < min_stars:
            raise CalibrationError(f"photometry: {len(zp)} matched stars with flux: fewer than {min_stars}")
        centre = float(np.median(zp))
        spread = 1.4826 * float(np.median(np.abs(zp - centre))) or 1e-3
        zp = zp[np.abs(zp - centre) < 3 * spread]
    return float(np.median(zp)), float(np.std(zp)), len(zp)

"""DIA sources of a difference image: detection of both signs, dipoles, shapes.

``detect_dia_sources`` finds positive and negative sources (matched filter), pairs opposite-sign
sources closer than 2 PSF FWHM into one dipole source (kept and flagged, as Rubin's DiaSource
``isDipole``: a moving or shifted object, or a misaligned subtraction), drops what cannot be measured
and, given the subtracted light, the residuals of bright stars, and measures each source's second
moments. Pure functions on arrays, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import sep

from prompt_processing.imaging.catalogue import (
    BoolArray,
    Catalogue,
    IntArray,
    Rms,
    find_peaks,
    measure,
    psf_flux,
    second_moments,
    significance,
)
from prompt_processing.imaging.psf import FloatArray, FloatImage, sigma_from_fwhm

DIPOLE_RADIUS_FWHM = 2.0  # opposite-sign lobes closer than this (in PSF FWHM) make a dipole
MAX_REFERENCE_RATIO = 0.1  # a diaSource fainter than 10% of the star under it is a residual
UNMEASURABLE = sep.APER_TRUNC | sep.APER_HASMASKED


@dataclass(frozen=True, eq=False)
class DiaMeasurements:
    """Per DIA source, in its catalogue's row order: adaptive second moments (px^2; for a Gaussian of
    sigma s, ``ixx = iyy = s^2``) and ``shape_flag`` when they could not be measured (stamp off the
    image or on NaN, no positive light, not an ellipse); the PSF-fit flux and its error (e-;
    ``psf_flag`` and NaN when the fit's stamp leaves the image); ``is_dipole`` with the lobes' mean absolute
    flux and the difference of their absolute fluxes (e-, positive minus negative), the lobes'
    positions (px; NaN for a source that is not a dipole). The lobes are measured where they were
    detected, not fitted as a pair: close lobes push each other's centroid apart (0.6 px for lobes of
    1.5 px sigma 5 px apart) and lend each other opposite light in their fits."""

    ixx_px2: FloatArray
    iyy_px2: FloatArray
    ixy_px2: FloatArray
    shape_flag: BoolArray
    psf_flux_e: FloatArray
    psf_flux_err_e: FloatArray
    psf_flag: BoolArray
    is_dipole: BoolArray
    dipole_mean_flux_e: FloatArray
    dipole_flux_diff_e: FloatArray
    positive_x_px: FloatArray
    positive_y_px: FloatArray
    negative_x_px: FloatArray
    negative_y_px: FloatArray

    def select(self, keep: BoolArray | IntArray) -> DiaMeasurements:
        """The rows where ``keep`` is true (or the given indices), in order."""
        return DiaMeasurements(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})


@dataclass(frozen=True, eq=False)
class DiaCatalogue:
    """DIA sources: their photometry (``sources``; a dipole's flux is its lobes' sum, its centroid
    their midpoint) and ``measurements``, row for row."""

    sources: Catalogue
    measurements: DiaMeasurements

    def __len__(self) -> int:
        return len(self.sources)

    def to_arrow(self) -> pa.Table:
        """The catalogue's columns, then the measurements' (``from_arrow`` reads it back)."""
        columns = {f.name: getattr(self.sources, f.name) for f in fields(Catalogue)}
        columns |= {f.name: getattr(self.measurements, f.name) for f in fields(DiaMeasurements)}
        return pa.table({name: pa.array(values) for name, values in columns.items()})

    @staticmethod
    def from_arrow(table: pa.Table) -> DiaCatalogue:
        """The catalogue ``to_arrow`` wrote."""
        sources = Catalogue(**{f.name: table[f.name].to_numpy() for f in fields(Catalogue)})
        return DiaCatalogue(sources, DiaMeasurements(**{f.name: table[f.name].to_numpy()
                                                        for f in fields(DiaMeasurements)}))  # fmt: skip


def detect_dia_sources(
    diff: FloatImage,
    rms: Rms,
    *,
    threshold_sigma: float,
    kernel_fwhm_px: float,
    reference: FloatImage | None = None,
    psf_covariance_px2: tuple[float, float, float] | None = None,
) -> DiaCatalogue:
    """DIA sources of a difference image (see the module's docstring).

    Each is measured with an aperture (``sources``) and by fitting the PSF model, an elliptical Gaussian
    of ``psf_covariance_px2`` = (xx, yy, xy) px^2 (the difference image's PSF; circular of
    ``kernel_fwhm_px`` when not given). Dropped, not returned: sources whose aperture leaves the image or
    touches a NaN pixel (no data, such as the edges the subtraction blanks) and, when ``reference`` (the
    subtracted star light, same units) is given, sources fainter than 10% of the reference flux under
    them (residuals of bright stars; a misaligned star's dipole goes with them). ``rms`` should include
    the Poisson noise of the subtracted stars.
    """
    snr_map = significance(diff, rms, kernel_fwhm_px=kernel_fwhm_px)
    positive_xy = find_peaks(snr_map, threshold_sigma=threshold_sigma)
    np.negative(snr_map, out=snr_map)
    negative_xy = find_peaks(snr_map, threshold_sigma=threshold_sigma)
    positive = measure(diff, rms, *positive_xy, kernel_fwhm_px=kernel_fwhm_px)
    negative = measure(diff, rms, *negative_xy, kernel_fwhm_px=kernel_fwhm_px)
    sigma2 = sigma_from_fwhm(kernel_fwhm_px) ** 2
    covariance = psf_covariance_px2 or (sigma2, sigma2, 0.0)
    found = _merge(positive, negative, _dipole_pairs(positive, negative, DIPOLE_RADIUS_FWHM * kernel_fwhm_px),
                   diff, rms, kernel_fwhm_px, covariance)  # fmt: skip
    keep = (found.sources.aperture_flags & UNMEASURABLE) == 0
    if reference is not None and keep.any():
        under = measure(reference, 1.0, found.sources.x_px, found.sources.y_px, kernel_fwhm_px=kernel_fwhm_px)
        keep &= np.abs(found.sources.flux_e) >= MAX_REFERENCE_RATIO * np.maximum(under.flux_e, 0.0)
    return DiaCatalogue(found.sources.select(keep), found.measurements.select(keep))


def _dipole_pairs(positive: Catalogue, negative: Catalogue, radius_px: float) -> tuple[IntArray, IntArray]:
    """Indices (positive, negative) of opposite-sign sources closer than ``radius_px``, closest pairs
    first, each source in at most one pair."""
    if len(positive) == 0 or len(negative) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    dx_px = positive.x_px[:, None] - negative.x_px[None, :]
    distance = np.hypot(dx_px, positive.y_px[:, None] - negative.y_px[None, :])
    pos_used: set[int] = set()
    neg_used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for flat in np.argsort(distance, axis=None):
        i, j = (int(k) for k in np.unravel_index(flat, distance.shape))
        if distance[i, j] >= radius_px:
            break
        if i not in pos_used and j not in neg_used:
            pos_used.add(i)
            neg_used.add(j)
            pairs.append((i, j))
    return np.array([p for p, _ in pairs], dtype=np.int64), np.array([n for _, n in pairs], dtype=np.int64)


def _merge(positive: Catalogue, negative: Catalogue, pairs: tuple[IntArray, IntArray], diff: FloatImage, rms: Rms,
           kernel_fwhm_px: float, covariance: tuple[float, float, float]) -> DiaCatalogue:  # fmt: skip
    """Single sources of both signs, then one source per dipole pair (at the lobes' midpoint; its fluxes
    the lobes' sums, its aperture flags theirs and the midpoint aperture's), each with its measurements."""
    pos_index, neg_index = pairs
    p, n = positive.select(pos_index), negative.select(neg_index)
    singles = Catalogue.concatenate([positive.select(np.setdiff1d(np.arange(len(positive)), pos_index)),
                                     negative.select(np.setdiff1d(np.arange(len(negative)), neg_index))])  # fmt: skip
    mid_x, mid_y = (p.x_px + n.x_px) / 2, (p.y_px + n.y_px) / 2
    middle = measure(diff, rms, mid_x, mid_y, kernel_fwhm_px=kernel_fwhm_px)
    net_error = np.hypot(p.flux_err_e, n.flux_err_e)
    dipoles = Catalogue(mid_x, mid_y, p.flux_e + n.flux_e, net_error, np.divide(p.flux_e + n.flux_e, net_error),
                        middle.aperture_flags | p.aperture_flags | n.aperture_flags)  # fmt: skip
    n_single, n_dipoles = len(singles), len(dipoles)
    ixx, iyy, ixy, shape_flag = second_moments(diff, singles.x_px, singles.y_px, np.sign(singles.flux_e),
                                               sigma_px=sigma_from_fwhm(kernel_fwhm_px))  # fmt: skip
    psf, psf_error, psf_flag = psf_flux(diff, rms, singles.x_px, singles.y_px, covariance)
    lobes = [psf_flux(diff, rms, lobe.x_px, lobe.y_px, covariance) for lobe in (p, n)]
    nan, no_shape = np.full(n_single, np.nan), np.full(n_dipoles, np.nan)  # two lobes are not an ellipse
    measurements = DiaMeasurements(
        np.concatenate([ixx, no_shape]), np.concatenate([iyy, no_shape]), np.concatenate([ixy, no_shape]),
        np.concatenate([shape_flag, np.ones(n_dipoles, bool)]),
        psf_flux_e=np.concatenate([psf, lobes[0][0] + lobes[1][0]]),
        psf_flux_err_e=np.concatenate([psf_error, np.hypot(lobes[0][1], lobes[1][1])]),
        psf_flag=np.concatenate([psf_flag, lobes[0][2] | lobes[1][2]]),
        is_dipole=np.concatenate([np.zeros(n_single, bool), np.ones(n_dipoles, bool)]),
        dipole_mean_flux_e=np.concatenate([nan, (lobes[0][0] - lobes[1][0]) / 2]),
        dipole_flux_diff_e=np.concatenate([nan, lobes[0][0] + lobes[1][0]]),
        positive_x_px=np.concatenate([nan, p.x_px]), positive_y_px=np.concatenate([nan, p.y_px]),
        negative_x_px=np.concatenate([nan, n.x_px]), negative_y_px=np.concatenate([nan, n.y_px]),
    )  # fmt: skip
    return DiaCatalogue(Catalogue.concatenate([singles, dipoles]), measurements)

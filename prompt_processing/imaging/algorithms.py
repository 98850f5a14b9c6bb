"""The processing steps of one visit-detector, as plain functions on numpy arrays.

isr -> background -> detect_sources -> difference -> detect_dia_sources. The pipelines' tasks
(``prompt_processing/pipelines``) run them one per quantum; ``process_detector`` runs the same chain
in memory (what the algorithms' own tests check). Images are float32 in electrons after ISR (ADU x
gain). No I/O.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import sep

from prompt_processing.imaging.catalogue import (
    Catalogue,
    Rms,
    catalogue_to_arrow,
    extract,
    match_to_truth,
)
from prompt_processing.imaging.dia import detect_dia_sources
from prompt_processing.imaging.psf import FloatImage
from prompt_processing.imaging.subtraction import Difference, difference, subtract_template

__all__ = [
    "Catalogue",
    "Difference",
    "ProcessResult",
    "background",
    "catalogue_to_arrow",
    "detect_dia_sources",
    "detect_sources",
    "difference",
    "difference_rms",
    "isr",
    "match_to_truth",
    "process_detector",
    "subtract_template",
]

MIN_FLAT = 0.05  # pixels whose flat response is below this are marked bad (NaN)
AMP_GRID = (2, 8)  # amplifiers (rows, columns) of an LSSTCam CCD
BACKGROUND_MESH_PX = 64
DEFAULT_KERNEL_FWHM_PX = 3.5  # detection filter: the nominal 0.7 arcsec seeing at 0.2 arcsec/px
SYSTEMATIC_FRACTION = 0.02  # subtraction residuals assumed up to 2% of the subtracted star light


def isr(raw_adu: FloatImage, bias_adu: FloatImage, flat: FloatImage, *, gain_e_per_adu: float = 1.0,
        saturation_adu: float = math.inf, amp_grid: tuple[int, int] = AMP_GRID) -> FloatImage:  # fmt: skip
    """Instrument signature removal: (raw - amplifier level - bias) * gain / flat, in electrons (float32).

    The raw is the imaging area (the calibrations' shape) followed by serial overscan columns, the same
    number for each of the ``amp_grid`` (rows, columns) amplifiers' columns; each amplifier's level is
    the median of its overscan rows beside it, subtracted from its part of the image. A raw with no
    overscan columns is taken as already corrected (its master bias must then hold the levels).
    Pixels where the flat is below 0.05 or not finite (dead or unilluminated), and raw pixels at or
    above ``saturation_adu`` (their light is lost), are NaN in the output rather than a wrong value;
    later steps mask non-finite pixels.
    """
    rows, columns = bias_adu.shape
    extra = raw_adu.shape[1] - columns
    if flat.shape != bias_adu.shape or raw_adu.shape[0] != rows or extra < 0 or extra % amp_grid[1]:
        raise ValueError(f"raw {raw_adu.shape}, bias {bias_adu.shape} and flat {flat.shape} differ in shape "
                         f"(the raw: the calibrations' columns and the same overscan for each of "
                         f"{amp_grid[1]} amplifier columns)")  # fmt: skip
    data = raw_adu[:, :columns]
    calexp = np.subtract(data, bias_adu, dtype=np.float32)
    if extra:
        overscan = raw_adu[:, columns:]
        per_amp = extra // amp_grid[1]
        row_edges = np.linspace(0, rows, amp_grid[0] + 1).astype(int)
        col_edges = np.linspace(0, columns, amp_grid[1] + 1).astype(int)
        for row_lo, row_hi in itertools.pairwise(row_edges):
            for j, (col_lo, col_hi) in enumerate(itertools.pairwise(col_edges)):
                level = np.median(overscan[row_lo:row_hi, j * per_amp : (j + 1) * per_amp])
                calexp[row_lo:row_hi, col_lo:col_hi] -= np.float32(level)
    calexp *= np.float32(gain_e_per_adu)
    good = np.isfinite(flat) & (flat >= MIN_FLAT)
    if math.isfinite(saturation_adu):
        good &= data < saturation_adu
    np.divide(calexp, flat, out=calexp, where=good)
    calexp[~good] = np.nan
    return calexp


def background(image: FloatImage, *, mesh_px: int = BACKGROUND_MESH_PX) -> tuple[FloatImage, float]:
    """``image`` minus sep's mesh background (64 px cells, 3 x 3 median filter), and the
    global background rms. Non-finite pixels are ignored in the fit and stay NaN. Returns a
    new C-contiguous native-endian float32 array; ``image`` is not modified."""
    data = np.array(image, dtype=np.dtype(np.float32).newbyteorder("="), order="C", copy=True)
    bad = ~np.isfinite(data)
    mask = None
    if bad.any():
        data[bad] = 0.0
        mask = bad
    estimate = sep.Background(data, mask=mask, bw=mesh_px, bh=mesh_px, fw=3, fh=3)
    estimate.subfrom(data)
    if mask is not None:
        data[bad] = np.nan
    return data, float(estimate.globalrms)


def detect_sources(
    image: FloatImage, rms: Rms, *, threshold_sigma: float = 5.0, kernel_fwhm_px: float = DEFAULT_KERNEL_FWHM_PX
) -> Catalogue:
    """Sources in a background-subtracted image above ``threshold_sigma`` (point-source S/N
    of a Gaussian matched filter of ``kernel_fwhm_px``), with aperture fluxes. Deblended by
    sep; errors include only ``rms``."""
    return extract(image, rms, threshold_sigma=threshold_sigma, kernel_fwhm_px=kernel_fwhm_px)


def difference_rms(
    diff_rms: float, model: FloatImage, *, gain_e_per_adu: float = 1.0, systematic_fraction: float = SYSTEMATIC_FRACTION
) -> FloatImage:
    """Per-pixel noise of a difference image: the sky noise measured on it, the Poisson noise
    of the subtracted star light ``model`` (e-), and ``systematic_fraction`` of that light
    for imperfect PSF matching, in quadrature (float32)."""
    variance = np.maximum(model, np.float32(0.0))  # star light s (e-)
    per_star_e = variance * np.float32(systematic_fraction**2)
    per_star_e += np.float32(1.0 / gain_e_per_adu)
    variance *= per_star_e  # s * (f^2 s + 1/g) = (f s)^2 + s/g
    variance += np.float32(diff_rms**2)
    return np.sqrt(variance, out=variance)


@dataclass(frozen=True, eq=False)
class ProcessResult:
    """What ``process_detector`` produced: the background-subtracted calexp (e-), its sources,
    the difference image and its diaSources, and how long each step took (s)."""

    calexp: FloatImage
    background_rms_e: float
    sources: Catalogue
    difference: Difference
    dia_sources: Catalogue
    timings_s: dict[str, float]


def process_detector(
    raw_adu: FloatImage,
    bias_adu: FloatImage,
    flat: FloatImage,
    template: FloatImage,
    *,
    gain_e_per_adu: float = 1.0,
    threshold_sigma: float = 5.0,
    kernel_fwhm_px: float = DEFAULT_KERNEL_FWHM_PX,
) -> ProcessResult:
    """Run isr, background, detect_sources, difference and detect_dia_sources in order.

    ``timings_s`` has one entry per step plus ``total``. Inputs are not modified.
    """
    timings_s: dict[str, float] = {}
    with _timed(timings_s, "isr"):
        calexp = isr(raw_adu, bias_adu, flat, gain_e_per_adu=gain_e_per_adu)
    with _timed(timings_s, "background"):
        calexp, rms_e = background(calexp)
    with _timed(timings_s, "detect_sources"):
        sources = detect_sources(calexp, rms_e, threshold_sigma=threshold_sigma, kernel_fwhm_px=kernel_fwhm_px)
    with _timed(timings_s, "difference"):
        diff = subtract_template(calexp, template, science_rms=rms_e, gain_e_per_adu=gain_e_per_adu)
        diff_image, diff_rms_e = background(diff.image)
        diff = replace(diff, image=diff_image)
    with _timed(timings_s, "detect_dia_sources"):
        noise = difference_rms(diff_rms_e, diff.model, gain_e_per_adu=gain_e_per_adu)
        dia_sources = detect_dia_sources(
            diff.image, noise, threshold_sigma=threshold_sigma, kernel_fwhm_px=kernel_fwhm_px, reference=diff.model
        ).sources
    timings_s["total"] = sum(timings_s.values())
    return ProcessResult(calexp, rms_e, sources, diff, dia_sources, timings_s)


@contextmanager
def _timed(timings_s: dict[str, float], step: str) -> Iterator[None]:
    """Record the wall time of the ``with`` block as ``timings_s[step]``."""
    start = time.perf_counter()
    yield
    timings_s[step] = time.perf_counter() - start

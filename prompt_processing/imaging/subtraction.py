"""Template subtraction: Gaussian PSF matching and photometric scaling fitted on star stamps.

The fit uses up to ``MAX_STARS`` bright, isolated stars found in the template. For each
trial width it convolves the sharper image's stamps with a Gaussian, solves for the flux
scale in closed form (weighted least squares) and keeps the width with the lowest chi^2.
This assumes both PSFs are close to circular Gaussians, as in the synthetic data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import sep
from scipy.spatial import cKDTree

from prompt_processing.imaging.catalogue import MIN_AREA_PX, MIN_PIXSTACK, sanitised
from prompt_processing.imaging.psf import FloatArray, FloatImage, convolve_gaussian, gaussian_kernel_1d

IntArray = npt.NDArray[np.int64]

STAMP_HALF_WIDTH_PX = 12
FIT_HALF_WIDTH_PX = 7  # chi^2 is summed over the central 15 x 15 pixels of each stamp
MAX_STARS = 100
WIDTH_STARS = 10  # the brightest stars, stacked, decide which image has the broader PSF
MIN_STARS = 1
STAR_THRESHOLD_SIGMA = 20.0  # per-pixel peak S/N of a star used in the fit
ISOLATION_PX = FIT_HALF_WIDTH_PX + 3  # neighbours are fitted too, but would bias the width fits
SAME_SOURCE_PX = 2.0  # a science detection this close to a template star's peak is that star
MAX_KERNEL_SIGMA_PX = 4.0
COARSE_STEP_PX = 0.25
FINE_STEP_PX = 0.05


@dataclass(frozen=True, eq=False)
class Difference:
    """A difference image and how it was made.

    ``image = science' - scale * template'`` where the primed image is the sharper of the two
    convolved with a Gaussian of ``kernel_sigma_px`` (``convolved`` says which: "template",
    "science" or "none"); NaN within the kernel's reach (5 sigma) of the edges, where the
    convolution lacked the light beyond the edge. ``model = scale * template'``: the star
    light that was subtracted. ``n_stars`` stars were used in the fit.
    """

    image: FloatImage
    model: FloatImage
    scale: float
    kernel_sigma_px: float
    convolved: str
    n_stars: int


def difference(calexp_bkgsub: FloatImage, template: FloatImage) -> FloatImage:
    """``calexp_bkgsub`` minus the PSF-matched, photometrically scaled ``template`` (e-)."""
    return subtract_template(calexp_bkgsub, template).image


def subtract_template(
    science: FloatImage,
    template: FloatImage,
    *,
    science_rms: float | None = None,
    gain_e_per_adu: float = 1.0,
    neighbours_xy: tuple[FloatArray, FloatArray] | None = None,
) -> Difference:
    """Match the template to the background-subtracted ``science`` image and subtract it.

    Both images must have the same shape and pixel grid. With no usable star the PSFs are left
    unmatched and the scale is 1. ``science_rms`` (the sky noise) weights the
    fit; it is estimated from ``science`` when not given. Stars with a non-finite science pixel
    (saturated, dead) are left out of the fit; those pixels are 0 in the difference, to be masked by
    the caller. ``neighbours_xy``, the sources already
    detected on the science image (x, y px), decide which fit stars are isolated; without them the
    template's own faint sources are extracted for that (~0.45 s more at 4k).
    """
    if science.shape != template.shape:
        raise ValueError(f"science {science.shape} and template {template.shape} differ in shape")
    (science, science_bad), (template, _) = sanitised(science), sanitised(template)
    rows, cols = _fit_star_positions(template, neighbours_xy)
    if science_bad is not None:  # a saturated (or dead) pixel in a star's science stamp would bias the fit
        whole = ~_stamps(science_bad, rows, cols).any(axis=(1, 2))
        rows, cols = rows[whole], cols[whole]
    if len(rows) < MIN_STARS:
        return Difference(science - template, template.copy(), 1.0, 0.0, "none", len(rows))
    if science_rms is None:
        science_rms = float(sep.Background(np.ascontiguousarray(science)).globalrms)
    sci_stamps = _stamps(science, rows, cols)
    tmpl_stamps = _stamps(template, rows, cols)
    weight = (1.0 / (science_rms**2 + np.maximum(sci_stamps, 0.0) / gain_e_per_adu)).astype(np.float32)
    signed_sigma = _best_kernel(sci_stamps, tmpl_stamps, weight)
    if signed_sigma >= 0:
        matched_template = convolve_gaussian(template, signed_sigma)
        matched_science, convolved = science, "template" if signed_sigma > 0 else "none"
    else:
        matched_template = template
        matched_science, convolved = convolve_gaussian(science, -signed_sigma), "science"
    scale, _ = _fit_scale(_stamps(matched_science, rows, cols), _stamps(matched_template, rows, cols), weight)
    model = matched_template * np.float32(scale)
    diff = np.subtract(matched_science, model, out=matched_science if matched_science is not science else None)
    if signed_sigma != 0:  # the convolution saw zeros beyond the edge: those pixels are unusable
        edge_px = len(gaussian_kernel_1d(abs(signed_sigma))) // 2
        for edge in (np.s_[:edge_px, :], np.s_[-edge_px:, :], np.s_[:, :edge_px], np.s_[:, -edge_px:]):
            diff[edge] = np.nan
    return Difference(diff, model, scale, abs(signed_sigma), convolved, len(rows))


def _fit_star_positions(template: FloatImage,
                        neighbours_xy: tuple[FloatArray, FloatArray] | None) -> tuple[IntArray, IntArray]:  # fmt: skip
    """Integer (row, col) peaks of bright stars (peak S/N >= 20) with no other source within 10 px
    (5-sigma sources of the template, or ``neighbours_xy`` but the star's own counterpart within
    ``SAME_SOURCE_PX``) and whole stamps on the image, brightest first, at most ``MAX_STARS``."""
    data = np.ascontiguousarray(template)
    sample = data[:: max(1, data.shape[0] // 256), :: max(1, data.shape[1] // 256)]
    rms = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))  # robust: stars are few
    if not rms > 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    sep.set_extract_pixstack(max(MIN_PIXSTACK, data.size // 16))
    floor_sigma = 5.0 if neighbours_xy is None else STAR_THRESHOLD_SIGMA
    objects = sep.extract(data, floor_sigma * rms, minarea=MIN_AREA_PX, filter_kernel=None)
    rows = np.asarray(objects["ypeak"], dtype=np.int64)
    cols = np.asarray(objects["xpeak"], dtype=np.int64)
    peak = np.asarray(objects["peak"], dtype=np.float64)
    bright = np.flatnonzero(peak >= STAR_THRESHOLD_SIGMA * rms)
    half = STAMP_HALF_WIDTH_PX
    inside = (rows >= half) & (rows < data.shape[0] - half) & (cols >= half) & (cols < data.shape[1] - half)
    bright = bright[inside[bright]]
    centres = np.column_stack([rows[bright], cols[bright]]).astype(np.float64)
    # Neighbours counted with a k-d tree: a dense field has thousands of sources (a distance matrix was seconds).
    if neighbours_xy is None:
        tree = cKDTree(np.column_stack([rows, cols]))
        isolated = bright[np.asarray(tree.query_ball_point(centres, ISOLATION_PX - 1e-9, return_length=True)) == 1]
    else:
        tree = cKDTree(np.column_stack([neighbours_xy[1], neighbours_xy[0]]))
        near = np.asarray(tree.query_ball_point(centres, ISOLATION_PX - 1e-9, return_length=True))
        itself = np.asarray(tree.query_ball_point(centres, SAME_SOURCE_PX, return_length=True))
        isolated = bright[near - np.minimum(itself, 1) == 0]  # nothing but (at most) its own counterpart
    chosen = isolated[np.argsort(-peak[isolated])][:MAX_STARS]
    return rows[chosen], cols[chosen]


def _stamps(image: np.ndarray, rows: IntArray, cols: IntArray) -> np.ndarray:
    """A (n, 25, 25) stack of the pixels around each (row, col), float32 (a boolean image stays boolean)."""
    offsets = np.arange(-STAMP_HALF_WIDTH_PX, STAMP_HALF_WIDTH_PX + 1)
    stack: np.ndarray = image[(rows[:, None] + offsets)[:, :, None], (cols[:, None] + offsets)[:, None, :]]
    return stack if stack.dtype == np.bool_ else stack.astype(np.float32)


def _fit_scale(science: FloatImage, template: FloatImage, weight: FloatImage) -> tuple[float, float]:
    """The weighted least-squares ``scale`` of science ~ scale * template over the stamps'
    centres, and its chi^2."""
    centre = slice(STAMP_HALF_WIDTH_PX - FIT_HALF_WIDTH_PX, STAMP_HALF_WIDTH_PX + FIT_HALF_WIDTH_PX + 1)
    s = science[:, centre, centre].astype(np.float64)
    t = template[:, centre, centre].astype(np.float64)
    w = weight[:, centre, centre].astype(np.float64)
    denominator = float((w * t * t).sum())
    scale = float((w * s * t).sum()) / denominator if denominator > 0 else 1.0
    chi2 = float((w * (s - scale * t) ** 2).sum())
    return scale, chi2


def _best_kernel(science: FloatImage, template: FloatImage, weight: FloatImage) -> float:
    """The Gaussian width that best matches the stamps: positive to blur the template,
    negative to blur the science image. Which image is broader is decided by Gaussian fits
    to the stacked stamps; the width by chi^2 of the matched stamps, which is more precise."""
    if _stack_sigma_px(science) >= _stack_sigma_px(template):
        return _minimise_on_grid(lambda sigma_px: _fit_scale(science, convolve_gaussian(template, sigma_px), weight)[1])
    return -_minimise_on_grid(lambda sigma_px: _fit_scale(convolve_gaussian(science, sigma_px), template, weight)[1])


def _stack_sigma_px(stamps: FloatImage) -> float:
    """The width (px) of the circular Gaussian that best fits, within the fit radius, the sum
    of the brightest ``WIDTH_STARS`` stamps (least squares over a 0.02 px grid). Both images
    are stacked on the same pixels, so sub-pixel offsets broaden both alike."""
    stacked = stamps[:WIDTH_STARS].sum(axis=0, dtype=np.float64)
    offsets = np.arange(-STAMP_HALF_WIDTH_PX, STAMP_HALF_WIDTH_PX + 1)
    radius2 = (offsets[:, None] ** 2 + offsets[None, :] ** 2).astype(np.float64)
    inside = radius2 <= FIT_HALF_WIDTH_PX**2
    data, r2 = stacked[inside], radius2[inside]
    sigmas = np.arange(0.3, 2 * MAX_KERNEL_SIGMA_PX, 0.02)
    models = np.exp(-0.5 * r2[None, :] / sigmas[:, None] ** 2)
    amplitudes = (models @ data) / (models**2).sum(axis=1)
    residuals = ((data[None, :] - amplitudes[:, None] * models) ** 2).sum(axis=1)
    return float(sigmas[int(np.argmin(residuals))])


def _minimise_on_grid(chi2: Callable[[float], float]) -> float:
    """The minimum of ``chi2(sigma)`` over [0, 4] px: a 0.25 px grid, then a 0.05 px grid
    around the best point, then a parabola through the best three."""
    coarse = np.arange(0.0, MAX_KERNEL_SIGMA_PX + 1e-9, COARSE_STEP_PX)
    best = float(coarse[int(np.argmin([chi2(float(sigma)) for sigma in coarse]))])
    lo, hi = max(0.0, best - COARSE_STEP_PX), min(MAX_KERNEL_SIGMA_PX, best + COARSE_STEP_PX)
    fine = np.arange(lo, hi + 1e-9, FINE_STEP_PX)
    values = np.array([chi2(float(sigma)) for sigma in fine])
    i = int(np.argmin(values))
    if i == 0 or i == len(fine) - 1:
        return float(fine[i])
    left, mid, right = values[i - 1 : i + 2]
    curvature = left - 2 * mid + right
    shift = 0.5 * (left - right) / curvature if curvature > 0 else 0.0
    return float(fine[i] + shift * FINE_STEP_PX)

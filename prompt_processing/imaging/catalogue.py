"""Source catalogues: detection with sep, windowed centroids, aperture and PSF-fit photometry, adaptive
second moments, Arrow conversion, truth matching."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import sep

from prompt_processing.imaging.psf import (
    FloatArray,
    FloatImage,
    convolve_separable,
    gaussian_kernel_1d,
    sigma_from_fwhm,
)

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
Rms = float | FloatImage  # a global noise level, or one per pixel, in the image's units

MIN_AREA_PX = 3  # pixels above threshold in the S/N map
DETECTION_KERNEL_HALF_WIDTH_SIGMA = 3.0  # the filter loses < 1% S/N against an untruncated one
MIN_PIXSTACK = 300_000  # sep's default; raised for large images, since its limit is process-wide
MOMENT_REACH_SIGMA = 3.0  # the moments' stamp reaches 3 weight-sigma from the centroid
PSF_REACH_SIGMA = 4.0  # the PSF fit's stamp: the model holds all but 0.03% of the flux


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Detected point sources, one row per index: centroid (x = column, y = row, px), flux in
    the image's units (e-) from a 1-FWHM-radius aperture corrected to total for a Gaussian
    PSF, its 1-sigma error, ``snr = flux_e / flux_err_e`` (negative for negative sources),
    and sep's aperture flags (``APER_TRUNC``: off the image, ``APER_HASMASKED``: touches a
    non-finite pixel)."""

    x_px: FloatArray
    y_px: FloatArray
    flux_e: FloatArray
    flux_err_e: FloatArray
    snr: FloatArray
    aperture_flags: IntArray

    def __len__(self) -> int:
        return len(self.x_px)

    def select(self, keep: BoolArray | IntArray) -> Catalogue:
        """The rows where the boolean ``keep`` is true (or the given indices), in order."""
        return Catalogue(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    @staticmethod
    def concatenate(parts: Sequence[Catalogue]) -> Catalogue:
        """The rows of ``parts``, one after another."""
        return Catalogue(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Catalogue)})

    @staticmethod
    def empty() -> Catalogue:
        """A catalogue with no rows."""
        nothing = np.zeros(0, dtype=np.float64)
        return Catalogue(nothing, nothing, nothing, nothing, nothing, np.zeros(0, dtype=np.int64))


def catalogue_to_arrow(catalogue: Catalogue) -> pa.Table:
    """One column per catalogue field (float64; int64 flags), for ``pyarrow.parquet.write_table``."""
    return pa.table({f.name: pa.array(getattr(catalogue, f.name)) for f in fields(catalogue)})


def significance(image: FloatImage, rms: Rms, *, kernel_fwhm_px: float) -> FloatImage:
    """The point-source S/N map of ``image``: at each pixel, the S/N of the best-fit amplitude
    of a Gaussian PSF of ``kernel_fwhm_px`` centred there, given per-pixel noise ``rms``.

    That is conv(I / rms^2, k) / sqrt(conv(1 / rms^2, k^2)), the matched filter for varying
    noise; it reduces to conv(I, k) / (rms * sqrt(sum k^2)) for a scalar ``rms``. Non-finite
    pixels carry no weight. The map is then scaled to unit robust scatter, so thresholds are
    in sigma of the actual noise, correlated or not.
    """
    kernel = gaussian_kernel_1d(sigma_from_fwhm(kernel_fwhm_px), half_width_sigma=DETECTION_KERNEL_HALF_WIDTH_SIGMA)
    data, bad = sanitised(image)
    if np.ndim(rms) == 0:
        result = convolve_separable(data, kernel)
        result /= np.float32(float(rms) * float((kernel**2).sum()))  # sqrt(sum(K^2)) = sum(k^2), K = outer(k, k)
        return _unit_scatter(result)
    inverse_variance = np.square(np.asarray(rms, dtype=np.float32))
    np.divide(np.float32(1.0), inverse_variance, out=inverse_variance, where=inverse_variance > 0)
    if bad is not None:
        inverse_variance[bad] = 0.0
    weighted = np.multiply(data, inverse_variance)
    numerator = convolve_separable(weighted, kernel)
    del weighted
    denominator = convolve_separable(inverse_variance, kernel**2)
    np.sqrt(denominator, out=denominator)
    np.divide(numerator, denominator, out=numerator, where=denominator > 0)
    return _unit_scatter(numerator)


def _unit_scatter(snr_map: FloatImage) -> FloatImage:
    """``snr_map`` divided (in place) by its robust scatter (1.4826 MAD of a ~256 x 256
    subsample), so it has unit variance even when the noise is correlated (a convolved
    image) or ``rms`` is off. Sources are sparse, so they barely move the MAD."""
    step = max(1, min(snr_map.shape) // 256)
    sample = snr_map[::step, ::step]
    scatter = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    if scatter > 0:
        snr_map /= np.float32(scatter)
    return snr_map


def find_peaks(snr_map: FloatImage, *, threshold_sigma: float) -> tuple[FloatArray, FloatArray]:
    """Centroids (x, y px) of the connected regions of ``snr_map`` above ``threshold_sigma``
    (at least 3 pixels), deblended by sep."""
    data = _native(snr_map)
    sep.set_extract_pixstack(max(MIN_PIXSTACK, data.size // 16))
    objects = sep.extract(data, threshold_sigma, minarea=MIN_AREA_PX, filter_kernel=None)
    return np.asarray(objects["x"], dtype=np.float64), np.asarray(objects["y"], dtype=np.float64)


def extract(image: FloatImage, rms: Rms, *, threshold_sigma: float, kernel_fwhm_px: float) -> Catalogue:
    """Positive point sources of ``image`` with matched-filter S/N above ``threshold_sigma``,
    with aperture photometry (see ``significance`` and ``measure``)."""
    snr_map = significance(image, rms, kernel_fwhm_px=kernel_fwhm_px)
    x_px, y_px = find_peaks(snr_map, threshold_sigma=threshold_sigma)
    return measure(image, rms, x_px, y_px, kernel_fwhm_px=kernel_fwhm_px)


def measure(
    image: FloatImage,
    rms: Rms,
    x_px: FloatArray,
    y_px: FloatArray,
    *,
    kernel_fwhm_px: float,
) -> Catalogue:
    """Aperture photometry of point sources at (x_px, y_px): radius 1 FWHM, divided by the
    fraction of a Gaussian PSF's flux inside it (0.9375). ``rms`` must include any Poisson
    noise of the sources that should count in the error."""
    if len(x_px) == 0:
        return Catalogue.empty()
    data, mask = sanitised(image)
    noise = float(rms) if np.ndim(rms) == 0 else _native(np.asarray(rms))
    radius_px = kernel_fwhm_px
    enclosed = 1.0 - math.exp(-0.5 * (radius_px / sigma_from_fwhm(kernel_fwhm_px)) ** 2)
    flux, flux_err, flags = sep.sum_circle(data, x_px, y_px, radius_px, err=noise, mask=mask)
    flux_e = np.asarray(flux, dtype=np.float64) / enclosed
    flux_err_e = np.asarray(flux_err, dtype=np.float64) / enclosed
    snr = np.divide(flux_e, flux_err_e, out=np.zeros_like(flux_e), where=flux_err_e > 0)
    return Catalogue(
        x_px=x_px, y_px=y_px, flux_e=flux_e, flux_err_e=flux_err_e, snr=snr,
        aperture_flags=np.asarray(flags, dtype=np.int64),
    )  # fmt: skip


def windowed_centroids(image: FloatImage, x_px: FloatArray, y_px: FloatArray, *,
                       fwhm_px: float) -> tuple[FloatArray, FloatArray]:  # fmt: skip
    """Centroids refined by sep's Gaussian-windowed iteration (SExtractor's XWIN/YWIN) with the PSF's
    sigma, far less noisy than the detection's isophotal barycentres; a source whose iteration fails or
    wanders more than one FWHM (a close neighbour) keeps its detection centroid."""
    if len(x_px) == 0:
        return x_px, y_px
    data, mask = sanitised(image)
    x, y, flags = sep.winpos(data, x_px, y_px, sigma_from_fwhm(fwhm_px), mask=mask)
    moved = np.hypot(x - x_px, y - y_px)
    keep = (flags == 0) & np.isfinite(x) & np.isfinite(y) & (moved <= fwhm_px)
    return np.where(keep, x, x_px), np.where(keep, y, y_px)


def psf_flux(image: FloatImage, rms: Rms, x_px: FloatArray, y_px: FloatArray,
             covariance_px2: tuple[float, float, float]) -> tuple[FloatArray, FloatArray, BoolArray]:  # fmt: skip
    """PSF-fit photometry: each source's total flux (image units) as the amplitude of the PSF model, an
    elliptical Gaussian of ``covariance_px2`` = (xx, yy, xy) centred on (x, y), fitted by weighted least
    squares (weights 1 / rms^2; non-finite pixels carry none), with its 1-sigma error; flagged (NaN) when
    the stamp (4 sigma of the model's wider axis) leaves the image or no pixel carries weight."""
    n = len(x_px)
    flux, error = np.full(n, np.nan), np.full(n, np.nan)
    flag = np.ones(n, dtype=bool)
    xx, yy, xy = covariance_px2
    determinant = xx * yy - xy**2
    if n == 0 or not determinant > 0:
        return flux, error, flag
    index, grid, dx, dy = _stamps(image.shape, x_px, y_px, math.ceil(PSF_REACH_SIGMA * math.sqrt(max(xx, yy))))
    data = image[grid].astype(np.float64)
    noise = np.asarray(rms, dtype=np.float64)[grid] if np.ndim(rms) else np.full(data.shape, float(rms))
    with np.errstate(divide="ignore"):
        weight = 1.0 / np.square(noise)
    weight = np.where(np.isfinite(data) & np.isfinite(weight), weight, 0.0)
    data = np.where(weight > 0, data, 0.0)
    model = np.exp(-0.5 * (yy * dx**2 - 2 * xy * dx * dy + xx * dy**2) / determinant) / (
        2 * math.pi * math.sqrt(determinant))  # unit total flux  # fmt: skip
    information = (weight * model**2).sum(axis=(1, 2))
    good = information > 0
    flux[index[good]] = (weight * model * data).sum(axis=(1, 2))[good] / information[good]
    error[index[good]] = 1.0 / np.sqrt(information[good])
    flag[index[good]] = False
    return flux, error, flag


def second_moments(image: FloatImage, x_px: FloatArray, y_px: FloatArray, sign: FloatArray, *,
                   sigma_px: float) -> tuple[FloatArray, FloatArray, FloatArray, BoolArray]:  # fmt: skip
    """Adaptive second moments (ixx, iyy, ixy in px^2) of ``sign * image`` about each (x, y), and a flag.

    Moments weighted by a circular Gaussian of ``sigma_px`` (the PSF's), corrected for the weight:
    for a Gaussian source of covariance C, the weighted moments are (C^-1 + W^-1)^-1, so C is exact for
    Gaussian sources. Flagged (NaN moments): the stamp leaves the image or holds a NaN, no positive
    weighted light, or a result that is not an ellipse (a dipole's, for instance).
    """
    n = len(x_px)
    ixx, iyy, ixy = (np.full(n, np.nan) for _ in range(3))
    flag = np.ones(n, dtype=bool)
    if n == 0:
        return ixx, iyy, ixy, flag
    index, grid, dx, dy = _stamps(image.shape, x_px, y_px, math.ceil(MOMENT_REACH_SIGMA * sigma_px))
    stamps = image[grid].astype(np.float64) * sign[index, None, None]
    light = stamps * np.exp(-0.5 * (dx**2 + dy**2) / sigma_px**2)
    total = light.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mxx = (light * dx * dx).sum(axis=(1, 2)) / total
        myy = (light * dy * dy).sum(axis=(1, 2)) / total
        mxy = (light * dx * dy).sum(axis=(1, 2)) / total
        determinant = mxx * myy - mxy**2
        # C^-1 = M^-1 - W^-1, with W = sigma^2 I.
        pxx, pyy, pxy = myy / determinant - sigma_px**-2, mxx / determinant - sigma_px**-2, -mxy / determinant
        precision_det = pxx * pyy - pxy**2
    good = np.isfinite(total) & (total > 0) & (determinant > 0) & (pxx > 0) & (precision_det > 0)
    good &= np.isfinite(precision_det)
    ixx[index[good]] = pyy[good] / precision_det[good]
    iyy[index[good]] = pxx[good] / precision_det[good]
    ixy[index[good]] = -pxy[good] / precision_det[good]
    flag[index[good]] = False
    return ixx, iyy, ixy, flag


def _stamps(shape: tuple[int, ...], x_px: FloatArray, y_px: FloatArray,
            half: int) -> tuple[IntArray, tuple[IntArray, IntArray], FloatArray, FloatArray]:  # fmt: skip
    """The sources whose (2 half + 1)^2 stamp about their nearest pixel lies on an image of ``shape``
    (their indices), the stamps' (rows, columns) index arrays, and each stamp pixel's offset from its
    source's (x, y) (dx, dy: (n, side, side))."""
    offsets = np.arange(-half, half + 1)
    cx, cy = np.rint(x_px).astype(np.int64), np.rint(y_px).astype(np.int64)
    rows, columns = shape
    index = np.flatnonzero((cx - half >= 0) & (cx + half < columns) & (cy - half >= 0) & (cy + half < rows))
    grid = (cy[index, None] + offsets)[:, :, None], (cx[index, None] + offsets)[:, None, :]
    return index, grid, grid[1] - x_px[index, None, None], grid[0] - y_px[index, None, None]


class HasPosition(Protocol):
    """Anything with a pixel position, such as ``synth.Transient``."""

    @property
    def x_px(self) -> float: ...

    @property
    def y_px(self) -> float: ...


def match_to_truth(
    detections: Catalogue, truth: Sequence[HasPosition], *, radius_px: float = 2.0
) -> tuple[int, int, int]:
    """(recovered, missed, spurious): one-to-one matches within ``radius_px``, closest pairs
    first; every detection not matched to a truth entry counts as spurious."""
    if not truth or len(detections) == 0:
        return 0, len(truth), len(detections)
    truth_x = np.array([t.x_px for t in truth])
    truth_y = np.array([t.y_px for t in truth])
    distance_px = np.hypot(truth_x[:, None] - detections.x_px[None, :], truth_y[:, None] - detections.y_px[None, :])
    used_truth: set[int] = set()
    used_detection: set[int] = set()
    for flat_index in np.argsort(distance_px, axis=None):
        i, j = np.unravel_index(flat_index, distance_px.shape)
        if distance_px[i, j] > radius_px:
            break
        if int(i) not in used_truth and int(j) not in used_detection:
            used_truth.add(int(i))
            used_detection.add(int(j))
    recovered = len(used_truth)
    return recovered, len(truth) - recovered, len(detections) - recovered


def _native(image: FloatImage) -> FloatImage:
    """C-contiguous native-endian float32, as sep requires (a copy only when needed)."""
    return np.ascontiguousarray(image, dtype=np.dtype(np.float32).newbyteorder("="))


def sanitised(image: FloatImage) -> tuple[FloatImage, BoolArray | None]:
    """``image`` as sep (and any step that cannot take NaN) needs it: C-contiguous native float32, and
    the mask of its non-finite pixels (None when all are finite, the common case, which costs no copy);
    a copy with those pixels zeroed otherwise."""
    data = _native(image)
    bad = ~np.isfinite(data)
    if not bad.any():
        return data, None
    data = np.where(bad, np.float32(0.0), data)
    return data, bad

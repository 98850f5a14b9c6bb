"""Circular Gaussian PSFs: point-source stamping and separable convolution, both float32.

Shared by the synthetic-data code (rendering stars) and the algorithms (PSF matching), so
that the renderer and the matcher agree on what a PSF of a given width is.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatImage = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
STAMP_HALF_WIDTH_SIGMA = 5.0  # stamps reach 5 sigma: what they leave out is < 4e-6 of the flux
BAND_ROWS = 32  # rows per cache-sized band in convolve_separable


def sigma_from_fwhm(fwhm_px: float) -> float:
    """The Gaussian sigma (px) of a PSF with full width at half maximum ``fwhm_px``."""
    if not fwhm_px > 0:
        raise ValueError(f"PSF FWHM must be > 0 px, got {fwhm_px}")
    return fwhm_px / FWHM_PER_SIGMA


def gaussian_kernel_1d(sigma_px: float, *, half_width_sigma: float = STAMP_HALF_WIDTH_SIGMA) -> FloatArray:
    """A centred, unit-sum 1-D Gaussian sampled at pixel centres, reaching ``half_width_sigma``
    (at least one pixel each side, so the length is odd and >= 3)."""
    if not sigma_px > 0:
        raise ValueError(f"kernel sigma must be > 0 px, got {sigma_px}")
    half_width = max(1, math.ceil(half_width_sigma * sigma_px))
    offsets = np.arange(-half_width, half_width + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma_px) ** 2)
    result: FloatArray = kernel / kernel.sum()
    return result


def convolve_gaussian(image: FloatImage, sigma_px: float) -> FloatImage:
    """``image`` convolved with a unit-sum Gaussian of ``sigma_px`` over its last two axes (so
    a stack of stamps works too); zero outside the image. ``sigma_px == 0`` returns a copy.
    Flux is conserved except what spills over the edges."""
    if sigma_px == 0:
        return np.array(image, dtype=np.float32, copy=True)
    return convolve_separable(image, gaussian_kernel_1d(sigma_px))


def convolve_separable(image: FloatImage, kernel_1d: FloatArray) -> FloatImage:
    """``image`` convolved over its last two axes with ``outer(kernel_1d, kernel_1d)`` (odd
    length, symmetric), zero outside the image, as a new float32 array.

    Shifted multiply-adds, no FFT. A 2-D image is done in bands of ``BAND_ROWS`` rows, both
    passes per band, so the work stays in the CPU cache: about 10 ns per pixel for a 17-tap
    kernel (a 4k x 4k CCD in ~0.2 s).
    """
    if len(kernel_1d) % 2 != 1:
        raise ValueError(f"kernel length must be odd, got {len(kernel_1d)}")
    kernel = np.asarray(kernel_1d, dtype=np.float32)
    data = np.asarray(image, dtype=np.float32)
    if data.ndim != 2:
        return _convolve_axis(_convolve_axis(data, kernel, -2), kernel, -1)
    half_width = len(kernel) // 2
    n_rows, n_cols = data.shape
    out = np.empty_like(data)
    band = np.zeros((BAND_ROWS, n_cols + 2 * half_width), dtype=np.float32)  # zero side margins
    term = np.empty_like(band)
    for row_lo in range(0, n_rows, BAND_ROWS):
        rows = min(BAND_ROWS, n_rows - row_lo)
        column_pass = band[:rows, half_width : half_width + n_cols]
        if row_lo < half_width or row_lo + rows + half_width > n_rows:
            column_pass.fill(0.0)  # some taps fall off the image and are skipped
        for offset, weight in enumerate(kernel):
            source_lo = row_lo + offset - half_width
            lo, hi = max(source_lo, 0), min(source_lo + rows, n_rows)  # rows outside the image are 0
            if lo >= hi:
                continue
            if hi - lo == rows and offset == 0:
                np.multiply(data[lo:hi], weight, out=column_pass)
                continue
            column_term = term[lo - source_lo : hi - source_lo, :n_cols]
            np.multiply(data[lo:hi], weight, out=column_term)
            column_pass[lo - source_lo : hi - source_lo] += column_term
        row_pass, row_term = out[row_lo : row_lo + rows], term[:rows, :n_cols]
        np.multiply(band[:rows, :n_cols], kernel[0], out=row_pass)
        for offset, weight in enumerate(kernel[1:], start=1):
            np.multiply(band[:rows, offset : offset + n_cols], weight, out=row_term)
            row_pass += row_term
    return out


def _convolve_axis(image: FloatImage, kernel: npt.NDArray[np.float32], axis: int) -> FloatImage:
    """One separable pass along ``axis`` with zero padding (``kernel`` is odd and symmetric)."""
    half_width = len(kernel) // 2
    pad = [(0, 0)] * image.ndim
    pad[axis] = (half_width, half_width)
    padded = np.pad(image, pad)
    length = image.shape[axis]
    out = np.zeros_like(image)
    term = np.empty_like(image)
    window: list[slice] = [slice(None)] * image.ndim
    for offset, weight in enumerate(kernel):
        window[axis] = slice(offset, offset + length)
        np.multiply(padded[tuple(window)], weight, out=term)
        out += term
    return out


def add_point_sources(
    image: FloatImage,
    x_px: FloatArray,
    y_px: FloatArray,
    flux: FloatArray,
    *,
    sigma_px: float,
) -> None:
    """Add Gaussian point sources to ``image`` in place, each stamped into its own small window.

    Pixel (i, j) has its centre at x = j, y = i (numpy order, as sep). Each source is sampled at
    pixel centres over +-5 sigma and normalised so the stamp holds exactly ``flux`` (less what
    falls off the image edge). Cost is about 2 us per source, whatever the image size.
    """
    if not (len(x_px) == len(y_px) == len(flux)):
        raise ValueError("x_px, y_px and flux must have the same length")
    if len(x_px) == 0:
        return
    half_width = max(1, math.ceil(STAMP_HALF_WIDTH_SIGMA * sigma_px))
    offsets = np.arange(-half_width, half_width + 1)
    centre_x = np.rint(x_px).astype(np.int64)
    centre_y = np.rint(y_px).astype(np.int64)
    profile_x = _profiles(centre_x, x_px, offsets, sigma_px)
    profile_y = _profiles(centre_y, y_px, offsets, sigma_px) * flux[:, None]
    n_rows, n_cols = image.shape
    for x0, y0, px, py in zip(centre_x - half_width, centre_y - half_width, profile_x, profile_y, strict=True):
        col_lo, col_hi = max(x0, 0), min(x0 + len(offsets), n_cols)
        row_lo, row_hi = max(y0, 0), min(y0 + len(offsets), n_rows)
        if col_lo >= col_hi or row_lo >= row_hi:
            continue
        stamp = np.outer(py[row_lo - y0 : row_hi - y0], px[col_lo - x0 : col_hi - x0])
        image[row_lo:row_hi, col_lo:col_hi] += stamp.astype(np.float32)


def _profiles(
    centre: npt.NDArray[np.int64], position: FloatArray, offsets: npt.NDArray[np.int64], sigma_px: float
) -> FloatArray:
    """Unit-sum 1-D Gaussian profiles, one row per source, on the pixels ``centre + offsets``."""
    distance = (centre[:, None] + offsets[None, :]) - position[:, None]
    profile = np.exp(-0.5 * (distance / sigma_px) ** 2)
    result: FloatArray = profile / profile.sum(axis=1, keepdims=True)
    return result

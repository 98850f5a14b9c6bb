"""Resampling an image from one WCS onto another's pixel grid (templates onto a science image).

The target is cut in 256 px blocks; over one block the source-to-target mapping of two TAN WCSs is
affine to far below a pixel, so each block is one ``scipy.ndimage.affine_transform`` (cubic B-spline,
the source's needed part spline-filtered once), with the affine map fitted to the exact mapping at
the block's corners. Target pixels the source does not cover stay as they were (NaN for a fresh
target), so several sources stitch: the first to cover a pixel fills it.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS
from scipy.ndimage import affine_transform, spline_filter

from prompt_processing.imaging.psf import FloatImage

BLOCK_PX = 256
_SPLINE_MARGIN_PX = 4


def warp_into(target: FloatImage, target_wcs: WCS, source: FloatImage, source_wcs: WCS) -> int:
    """Fill the NaN pixels of ``target`` that ``source`` covers with ``source`` resampled; return how many."""
    rows, columns = target.shape
    gy = np.unique(np.append(np.arange(0, rows, BLOCK_PX), rows)).astype(float)
    gx = np.unique(np.append(np.arange(0, columns, BLOCK_PX), columns)).astype(float)
    mx, my = np.meshgrid(gx - 0.5, gy - 0.5)  # block corners are pixel edges
    ra, dec = target_wcs.pixel_to_world_values(mx, my)
    sx, sy = (np.asarray(v, dtype=float) for v in source_wcs.world_to_pixel_values(ra, dec))
    src_rows, src_columns = source.shape
    near = (sx > -BLOCK_PX) & (sx < src_columns + BLOCK_PX) & (sy > -BLOCK_PX) & (sy < src_rows + BLOCK_PX)
    if not near.any():
        return 0
    lo_x = max(int(np.floor(sx[near].min())) - _SPLINE_MARGIN_PX, 0)
    hi_x = min(int(np.ceil(sx[near].max())) + _SPLINE_MARGIN_PX + 1, src_columns)
    lo_y = max(int(np.floor(sy[near].min())) - _SPLINE_MARGIN_PX, 0)
    hi_y = min(int(np.ceil(sy[near].max())) + _SPLINE_MARGIN_PX + 1, src_rows)
    if lo_x >= hi_x or lo_y >= hi_y:
        return 0
    coefficients: np.ndarray | None = None
    filled = 0
    for i in range(len(gy) - 1):
        for j in range(len(gx) - 1):
            corners = near[i : i + 2, j : j + 2]
            if not corners.any():
                continue
            y0, y1, x0, x1 = int(gy[i]), int(gy[i + 1]), int(gx[j]), int(gx[j + 1])
            block = target[y0:y1, x0:x1]
            todo = ~np.isfinite(block)
            if not todo.any():
                continue
            if coefficients is None:
                crop = np.nan_to_num(np.asarray(source[lo_y:hi_y, lo_x:hi_x], dtype=np.float32))
                coefficients = spline_filter(crop, order=3, output=np.float32, mode="nearest")
            # Corners in the block's own pixel coordinates (its first pixel's centre is 0), source in the crop's.
            matrix, offset = _affine(my[i : i + 2, j : j + 2] - y0, mx[i : i + 2, j : j + 2] - x0,
                                     sy[i : i + 2, j : j + 2] - lo_y, sx[i : i + 2, j : j + 2] - lo_x)  # fmt: skip
            values = affine_transform(coefficients, matrix, offset, output_shape=block.shape, order=3,
                                      mode="constant", cval=np.nan, prefilter=False, output=np.float32)  # fmt: skip
            take = todo & np.isfinite(values)
            block[take] = values[take]
            filled += int(take.sum())
    return filled


def _affine(ty: np.ndarray, tx: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The affine map (row, col) -> (source row, source col) that best fits four corner correspondences."""
    design = np.column_stack([ty.ravel(), tx.ravel(), np.ones(ty.size)])
    solution, *_ = np.linalg.lstsq(design, np.column_stack([sy.ravel(), sx.ravel()]), rcond=None)
    return solution[:2].T, solution[2]

"""Resampling an image from one WCS onto another's pixel grid (templates onto a science image).

The target is cut in 256 px blocks; over one block the source-to-target mapping of two TAN WCSs is
affine to far below a pixel, so each block is one ``scipy.ndimage.affine_transform`` (cubic B-spline,
the source's needed part spline-filtered once), with the affine map fitted to the exact mapping at
the block's corners. Target pixels the source does not cover stay as they were (NaN for a fresh
target), so several sources stitch: the first to cover a pixel fills it.

``plan_warp`` needs only the source's WCS and shape: it says which part of the source the target's
still-empty blocks need (``WarpPlan.crop``), so a caller can read just that cutout from disk, or
nothing at all when the plan is None; ``apply_warp`` then resamples it. ``warp_into`` does both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy.ndimage import affine_transform, spline_filter

from prompt_processing.imaging.catalogue import sanitised
from prompt_processing.imaging.psf import FloatImage

BLOCK_PX = 256
_SPLINE_MARGIN_PX = 4


@dataclass(frozen=True)
class _Block:
    """A target block (rows y0:y1, columns x0:x1) and the affine map from its pixels into the crop."""

    y0: int
    y1: int
    x0: int
    x1: int
    matrix: np.ndarray
    offset: np.ndarray


@dataclass(frozen=True)
class WarpPlan:
    """What a source contributes to a target: the source pixels needed, ``crop`` = (row start, row stop,
    column start, column stop) in the source's array, and the target blocks to fill from them."""

    crop: tuple[int, int, int, int]
    blocks: tuple[_Block, ...]


def plan_warp(target: FloatImage, target_wcs: WCS, source_shape: tuple[int, int], source_wcs: WCS) -> WarpPlan | None:
    """The plan to fill ``target``'s NaN pixels from a source of ``source_shape`` on ``source_wcs``; None
    when the source covers none of the blocks that still have NaN pixels."""
    rows, columns = target.shape
    gy = np.unique(np.append(np.arange(0, rows, BLOCK_PX), rows)).astype(float)
    gx = np.unique(np.append(np.arange(0, columns, BLOCK_PX), columns)).astype(float)
    mx, my = np.meshgrid(gx - 0.5, gy - 0.5)  # block corners are pixel edges
    ra, dec = target_wcs.pixel_to_world_values(mx, my)
    sx, sy = (np.asarray(v, dtype=float) for v in source_wcs.world_to_pixel_values(ra, dec))
    src_rows, src_columns = source_shape
    wanted: list[tuple[int, int, int, int, np.ndarray, np.ndarray]] = []
    for i in range(len(gy) - 1):
        for j in range(len(gx) - 1):
            bx, by = sx[i : i + 2, j : j + 2], sy[i : i + 2, j : j + 2]
            if not (np.isfinite(bx).all() and np.isfinite(by).all()):
                continue
            if bx.max() < -0.5 or bx.min() > src_columns - 0.5 or by.max() < -0.5 or by.min() > src_rows - 0.5:
                continue  # the block's source footprint (affine: inside its corners' box) misses the source
            y0, y1, x0, x1 = int(gy[i]), int(gy[i + 1]), int(gx[j]), int(gx[j + 1])
            if np.isfinite(target[y0:y1, x0:x1]).all():
                continue
            wanted.append((y0, y1, x0, x1, by, bx))
    if not wanted:
        return None
    lo_y = max(int(np.floor(min(w[4].min() for w in wanted))) - _SPLINE_MARGIN_PX, 0)
    hi_y = min(int(np.ceil(max(w[4].max() for w in wanted))) + _SPLINE_MARGIN_PX + 1, src_rows)
    lo_x = max(int(np.floor(min(w[5].min() for w in wanted))) - _SPLINE_MARGIN_PX, 0)
    hi_x = min(int(np.ceil(max(w[5].max() for w in wanted))) + _SPLINE_MARGIN_PX + 1, src_columns)
    blocks = []
    for y0, y1, x0, x1, by, bx in wanted:
        # Corners in the block's own pixel coordinates (its first pixel's centre is 0), source in the crop's.
        cy, cx = np.meshgrid([y0 - 0.5, y1 - 0.5], [x0 - 0.5, x1 - 0.5], indexing="ij")
        matrix, offset = _affine(cy - y0, cx - x0, by - lo_y, bx - lo_x)
        blocks.append(_Block(y0, y1, x0, x1, matrix, offset))
    return WarpPlan((lo_y, hi_y, lo_x, hi_x), tuple(blocks))


def apply_warp(target: FloatImage, plan: WarpPlan, crop: FloatImage) -> int:
    """Fill ``target``'s NaN pixels in the plan's blocks from ``crop`` (the source's ``plan.crop`` part;
    NaN in it counts as 0); return how many were filled."""
    lo_y, hi_y, lo_x, hi_x = plan.crop
    if crop.shape != (hi_y - lo_y, hi_x - lo_x):
        raise ValueError(f"crop {crop.shape} is not the planned {(hi_y - lo_y, hi_x - lo_x)}")
    coefficients = spline_filter(sanitised(crop)[0], order=3, output=np.float32,
                                 mode="nearest")  # fmt: skip
    filled = 0
    for b in plan.blocks:
        block = target[b.y0 : b.y1, b.x0 : b.x1]
        todo = ~np.isfinite(block)
        values = affine_transform(coefficients, b.matrix, b.offset, output_shape=block.shape, order=3,
                                  mode="constant", cval=np.nan, prefilter=False, output=np.float32)  # fmt: skip
        take = todo & np.isfinite(values)
        block[take] = values[take]
        filled += int(take.sum())
    return filled


def warp_into(target: FloatImage, target_wcs: WCS, source: FloatImage, source_wcs: WCS) -> int:
    """Fill the NaN pixels of ``target`` that ``source`` covers with ``source`` resampled; return how many."""
    plan = plan_warp(target, target_wcs, source.shape, source_wcs)
    if plan is None:
        return 0
    lo_y, hi_y, lo_x, hi_x = plan.crop
    return apply_warp(target, plan, source[lo_y:hi_y, lo_x:hi_x])


def _affine(ty: np.ndarray, tx: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The affine map (row, col) -> (source row, source col) that best fits four corner correspondences."""
    design = np.column_stack([ty.ravel(), tx.ravel(), np.ones(ty.size)])
    solution, *_ = np.linalg.lstsq(design, np.column_stack([sy.ravel(), sx.ravel()]), rcond=None)
    return solution[:2].T, solution[2]

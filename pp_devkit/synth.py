"""Synthetic LSST-like images, deterministic from their seeds: calibrations, templates, raws.

Units: raws and biases are in ADU, everything else in electrons, with a gain of
``GAIN_E_PER_ADU`` (1 e-/ADU). All images are float32, so a full 4096 x 4096 CCD is 64 MiB
per frame. Here star fields are in pixels: a detector's patch of sky is named by ``(tile,
detector)`` and a star sits at the same pixel in the template and in every raw of that tile and
detector (what the image algorithms' own tests use); ``skyfield`` puts stars on the sky instead
(what the simulated night uses). Seeds come from BLAKE2b hashes of the identifying
strings, never from Python's salted ``hash()``, so the data are the same in every process.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np

from prompt_processing.imaging.algorithms import AMP_GRID  # LSSTCam CCDs: 2 x 8 amplifiers
from prompt_processing.imaging.fits_io import from_fits_bytes, to_fits_bytes
from prompt_processing.imaging.psf import FWHM_PER_SIGMA, FloatArray, FloatImage, add_point_sources, sigma_from_fwhm

__all__ = [
    "DEFAULT_SHAPE_PX",
    "FULL_CCD",
    "GAIN_E_PER_ADU",
    "OVERSCAN_PX",
    "DetectorGeometry",
    "StarField",
    "Transient",
    "amplifier_levels_adu",
    "bias_frame",
    "flat_frame",
    "from_fits_bytes",
    "raw_image",
    "star_field",
    "template_image",
    "to_fits_bytes",
]

GAIN_E_PER_ADU = 1.0
READ_NOISE_E = 6.0
BIAS_LEVEL_ADU = 1000.0
OVERSCAN_PX = 8  # serial overscan columns per amplifier column, appended to the raw's right
AMP_DRIFT_ADU = 2.0  # amplifier level changes between exposures (rms)
VIGNETTING_AT_CORNER = 0.12  # fractional flat-field falloff at the detector corners
PIXEL_RESPONSE_RMS = 0.01  # pixel-to-pixel flat-field variation
DEFAULT_STAR_DENSITY_PER_MPIX = 300.0
STAR_FLUX_RANGE_E = (300.0, 5.0e5)  # faint end below detection; bright end ~35k e- peak
STAR_COUNT_SLOPE = 0.75  # N(>F) ~ F^-0.75, i.e. dlogN/dm = 0.3, as for Galactic stars
TEMPLATE_SEEING_FWHM_PX = 3.0
TEMPLATE_N_EXPOSURES = 25  # the template's noise is that of a 25-exposure coadd
TEMPLATE_SKY_LEVEL_E = 1000.0
TRANSIENT_SNR_RANGE = (10.0, 100.0)  # expected S/N in the difference image
TRANSPARENCY_RANGE = (0.85, 1.0)  # per-visit throughput relative to the template's


@dataclass(frozen=True)
class DetectorGeometry:
    """The imaging area of one detector, in pixels (rows, columns)."""

    shape_px: tuple[int, int] = (512, 512)

    def __post_init__(self) -> None:
        if len(self.shape_px) != 2 or min(self.shape_px) < 64:
            raise ValueError(f"shape_px must be two sizes >= 64 px, got {self.shape_px}")


DEFAULT_SHAPE_PX = DetectorGeometry().shape_px
FULL_CCD = DetectorGeometry((4096, 4096))


@dataclass(frozen=True, eq=False)
class StarField:
    """Stars on one detector: pixel positions (x = column, y = row) and fluxes in a
    template-depth exposure of the nominal throughput (e-)."""

    x_px: FloatArray
    y_px: FloatArray
    flux_e: FloatArray

    def __len__(self) -> int:
        return len(self.x_px)


@dataclass(frozen=True)
class Transient:
    """One injected point source: where it is, its flux in the raw (e-), and the S/N it was
    drawn to have in a difference image."""

    transient_id: str
    x_px: float
    y_px: float
    flux_e: float
    expected_snr: float


def seed_for(*parts: object) -> int:
    """A 64-bit seed from identifying values, the same in every process and Python version."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def bias_frame(instrument: str, detector: int, shape_px: tuple[int, int] = DEFAULT_SHAPE_PX) -> FloatImage:
    """The master bias (ADU), overscan-corrected as a combined bias is: per-column offsets (0.5 ADU
    rms) and a fixed pixel pattern (1 ADU rms) about 0; noise-free and the same for the same
    (instrument, detector, shape). The amplifiers' levels are in each raw's overscan."""
    rng = np.random.default_rng(seed_for("bias", instrument, detector, *shape_px))
    column_offsets_adu = rng.normal(0.0, 0.5, size=shape_px[1]).astype(np.float32)
    bias = rng.standard_normal(shape_px, dtype=np.float32)
    bias += column_offsets_adu[None, :]
    return bias


def amplifier_levels_adu(instrument: str, detector: int, exposure: tuple[object, ...]) -> FloatArray:
    """The (2, 8) amplifiers' bias levels (ADU) in one exposure: ~1000 ADU, a fixed offset per
    amplifier (15 ADU rms) and a drift from exposure to exposure (2 ADU rms) that no master bias can
    know: only the raw's overscan measures it."""
    fixed = np.random.default_rng(seed_for("amplifiers", instrument, detector)).normal(0.0, 15.0, size=AMP_GRID)
    drift = np.random.default_rng(seed_for("amplifier-drift", instrument, detector, *exposure)).normal(
        0.0, AMP_DRIFT_ADU, size=AMP_GRID)  # fmt: skip
    levels: FloatArray = BIAS_LEVEL_ADU + fixed + drift
    return levels


def _with_overscan(data_adu: FloatImage, levels_adu: FloatArray, rng: np.random.Generator) -> FloatImage:
    """``data_adu`` (bias pattern, signal and noise; no amplifier level) read out through the amplifiers:
    each amplifier's level added to its part of the image, and ``OVERSCAN_PX`` columns of overscan per
    amplifier column appended on the right (the level plus read noise, the rows of the amplifier beside it)."""
    rows, columns = data_adu.shape
    n_amp_rows, n_amp_columns = AMP_GRID
    row_edges = np.linspace(0, rows, n_amp_rows + 1).astype(int)
    col_edges = np.linspace(0, columns, n_amp_columns + 1).astype(int)
    overscan = rng.standard_normal((rows, n_amp_columns * OVERSCAN_PX), dtype=np.float32)
    overscan *= np.float32(READ_NOISE_E / GAIN_E_PER_ADU)
    for amp_row, (row_lo, row_hi) in enumerate(itertools.pairwise(row_edges)):
        for amp_col, (col_lo, col_hi) in enumerate(itertools.pairwise(col_edges)):
            level = np.float32(levels_adu[amp_row, amp_col])
            data_adu[row_lo:row_hi, col_lo:col_hi] += level
            overscan[row_lo:row_hi, amp_col * OVERSCAN_PX : (amp_col + 1) * OVERSCAN_PX] += level
    return np.concatenate([data_adu, overscan], axis=1)


def flat_frame(instrument: str, detector: int, shape_px: tuple[int, int] = DEFAULT_SHAPE_PX) -> FloatImage:
    """The master flat: a vignetting-like falloff (separable, to ~0.89 at the corners) times a
    1% rms pixel response, normalised to mean 1; strictly positive, the same for the same inputs."""
    rng = np.random.default_rng(seed_for("flat", instrument, detector, *shape_px))
    falloff_rows, falloff_cols = (
        np.float32(1.0) - np.float32(VIGNETTING_AT_CORNER / 2.0) * np.linspace(-1.0, 1.0, n, dtype=np.float32) ** 2
        for n in shape_px
    )
    flat = rng.standard_normal(shape_px, dtype=np.float32)
    flat *= np.float32(PIXEL_RESPONSE_RMS)
    flat += np.float32(1.0)
    flat *= falloff_rows[:, None]
    flat *= falloff_cols[None, :]
    flat /= np.float32(flat.mean(dtype=np.float64))
    return flat


def star_field(
    tile: str,
    detector: int,
    shape_px: tuple[int, int] = DEFAULT_SHAPE_PX,
    *,
    density_per_mpix: float = DEFAULT_STAR_DENSITY_PER_MPIX,
) -> StarField:
    """The stars of (tile, detector): a Poisson number (mean ``density_per_mpix`` per 10^6 px)
    at uniform positions, with Galactic-like counts N(>F) ~ F^-0.75 between 300 and 5e5 e-.

    Deterministic from (tile, detector, shape, density): the template and every raw of the
    same tile and detector get the same stars at the same pixels (no WCS is modelled).
    """
    rng = np.random.default_rng(seed_for("stars", tile, detector, *shape_px, density_per_mpix))
    n_rows, n_cols = shape_px
    n_stars = int(rng.poisson(density_per_mpix * n_rows * n_cols / 1e6))
    x_px = rng.uniform(-0.5, n_cols - 0.5, n_stars)
    y_px = rng.uniform(-0.5, n_rows - 0.5, n_stars)
    flux_min, flux_max = STAR_FLUX_RANGE_E
    tail = 1.0 - (flux_min / flux_max) ** STAR_COUNT_SLOPE  # inverse CDF of a Pareto cut at flux_max
    flux_e = flux_min * (1.0 - rng.uniform(0.0, 1.0, n_stars) * tail) ** (-1.0 / STAR_COUNT_SLOPE)
    return StarField(x_px=x_px, y_px=y_px, flux_e=flux_e)


def template_image(
    tile: str,
    detector: int,
    shape_px: tuple[int, int] = DEFAULT_SHAPE_PX,
    *,
    density_per_mpix: float = DEFAULT_STAR_DENSITY_PER_MPIX,
    seeing_fwhm_px: float = TEMPLATE_SEEING_FWHM_PX,
) -> FloatImage:
    """The deep coadd of (tile, detector) in e-: sky-subtracted, flat, the star field at the
    nominal throughput with a 3 px FWHM PSF, and the noise of a 25-exposure stack (no
    transients). Deterministic from its arguments."""
    stars = star_field(tile, detector, shape_px, density_per_mpix=density_per_mpix)
    rng = np.random.default_rng(seed_for("template", tile, detector, *shape_px, density_per_mpix, seeing_fwhm_px))
    image = np.zeros(shape_px, dtype=np.float32)
    add_point_sources(image, stars.x_px, stars.y_px, stars.flux_e, sigma_px=sigma_from_fwhm(seeing_fwhm_px))
    variance = image.clip(min=0.0)
    variance += np.float32(TEMPLATE_SKY_LEVEL_E + READ_NOISE_E**2)
    variance /= np.float32(TEMPLATE_N_EXPOSURES)
    noise = rng.standard_normal(shape_px, dtype=np.float32)
    noise *= np.sqrt(variance)
    image += noise
    return image


def raw_image(
    *,
    instrument: str,
    detector: int,
    group_id: str,
    tile: str = "",
    stars: StarField | None = None,
    snap: int = 0,
    shape_px: tuple[int, int] = DEFAULT_SHAPE_PX,
    sky_level_e: float = 1000.0,
    seeing_fwhm_px: float = 3.5,
    n_transients: int = 5,
    rng_seed: int = 0,
    density_per_mpix: float = DEFAULT_STAR_DENSITY_PER_MPIX,
) -> tuple[FloatImage, list[Transient]]:
    """One raw exposure (ADU) and the transients injected into it.

    The stars are ``stars`` (e.g. the sky's, through a WCS: ``skyfield.raw_scene``) or else the pixel
    star field of (``tile``, detector).

    raw = bias + flat * (sky + transparency * stars + transients) + noise + each amplifier's level,
    with ``OVERSCAN_PX`` overscan columns per amplifier column appended (``shape_px`` is the imaging
    area: the raw has ``AMP_GRID[1] * OVERSCAN_PX`` columns more), the sources drawn
    with a Gaussian PSF of ``seeing_fwhm_px``; the noise is Poisson (in its Gaussian limit,
    sky >> 1 e-) plus 6 e- read noise. ``transparency`` is drawn per visit in [0.85, 1].

    Transients are point sources away from the edges, from each other and from every star
    (>= 4 FWHM), with fluxes giving a log-uniform expected S/N of 10-100 in a difference
    image. Positions and fluxes come from (rng_seed, group_id, detector), so all snaps of a
    visit see the same transients; the noise comes from (rng_seed, group_id, detector, snap).
    The same arguments give bit-identical output.
    """
    if n_transients < 0 or sky_level_e < 0:
        raise ValueError(f"need n_transients >= 0 and sky_level_e >= 0, got {n_transients}, {sky_level_e}")
    sigma_px = sigma_from_fwhm(seeing_fwhm_px)
    if stars is None:
        stars = star_field(tile, detector, shape_px, density_per_mpix=density_per_mpix)
    visit_rng = np.random.default_rng(seed_for("visit", rng_seed, group_id))
    transparency = visit_rng.uniform(*TRANSPARENCY_RANGE)
    transient_rng = np.random.default_rng(seed_for("transients", rng_seed, group_id, detector))
    truth = _draw_transients(transient_rng, stars, shape_px, n_transients, sigma_px, sky_level_e, group_id, detector)

    signal_e = np.full(shape_px, sky_level_e, dtype=np.float32)
    add_point_sources(signal_e, stars.x_px, stars.y_px, stars.flux_e * transparency, sigma_px=sigma_px)
    add_point_sources(
        signal_e,
        np.array([t.x_px for t in truth]),
        np.array([t.y_px for t in truth]),
        np.array([t.flux_e for t in truth]),
        sigma_px=sigma_px,
    )
    # In place from here: a fresh 64 MiB array costs more to fault in than to compute.
    work = flat_frame(instrument, detector, shape_px)
    signal_e *= work
    np.maximum(signal_e, 0.0, out=work)
    work += np.float32(READ_NOISE_E**2)
    np.sqrt(work, out=work)
    noise_rng = np.random.default_rng(seed_for("noise", rng_seed, group_id, detector, snap))
    noise = noise_rng.standard_normal(shape_px, dtype=np.float32)
    noise *= work
    signal_e += noise
    signal_e /= np.float32(GAIN_E_PER_ADU)
    signal_e += bias_frame(instrument, detector, shape_px)
    levels = amplifier_levels_adu(instrument, detector, (rng_seed, group_id, snap))
    return _with_overscan(signal_e, levels, noise_rng), truth


def _draw_transients(
    rng: np.random.Generator,
    stars: StarField,
    shape_px: tuple[int, int],
    n_transients: int,
    sigma_px: float,
    sky_level_e: float,
    group_id: str,
    detector: int,
) -> list[Transient]:
    """Isolated positions, then fluxes for a log-uniform expected S/N."""
    placed_x, placed_y = _isolated_positions(rng, stars, shape_px, n_transients, 4.0 * sigma_px * FWHM_PER_SIGMA)
    # Noise of optimal PSF photometry: effective area 4 pi sigma^2 of sky, read and template noise.
    template_variance_e = (TEMPLATE_SKY_LEVEL_E + READ_NOISE_E**2) / TEMPLATE_N_EXPOSURES
    noise_e = math.sqrt(4.0 * math.pi * sigma_px**2 * (sky_level_e + READ_NOISE_E**2 + template_variance_e))
    log_snr_lo, log_snr_hi = (math.log(snr) for snr in TRANSIENT_SNR_RANGE)
    log_snr = rng.uniform(log_snr_lo, log_snr_hi, n_transients)
    return [
        Transient(
            transient_id=f"{group_id}/{detector}/{index}",
            x_px=float(x),
            y_px=float(y),
            flux_e=float(math.exp(snr) * noise_e),
            expected_snr=float(math.exp(snr)),
        )
        for index, (x, y, snr) in enumerate(zip(placed_x, placed_y, log_snr, strict=True))
    ]


def _isolated_positions(
    rng: np.random.Generator, stars: StarField, shape_px: tuple[int, int], n_positions: int, separation_px: float
) -> tuple[list[float], list[float]]:
    """``n_positions`` uniform positions at least ``separation_px`` from the edges, the stars
    and each other, by rejection sampling in batches; ValueError if they do not fit."""
    n_rows, n_cols = shape_px
    usable_px2 = max(n_rows - 1 - 2 * separation_px, 0.0) * max(n_cols - 1 - 2 * separation_px, 0.0)
    if n_positions * math.pi * (separation_px / 2) ** 2 > usable_px2:  # disks of radius sep/2 cannot overlap
        raise ValueError(f"cannot place {n_positions} isolated transients on a {shape_px} detector")
    placed_x: list[float] = []
    placed_y: list[float] = []
    for _ in range(n_positions // 8 + 200):  # batches of 256 candidates
        if len(placed_x) == n_positions:
            break
        xs = rng.uniform(separation_px, n_cols - 1 - separation_px, 256)
        ys = rng.uniform(separation_px, n_rows - 1 - separation_px, 256)
        clear_of_stars = np.ones(len(xs), dtype=bool)
        if len(stars):
            nearest_star_px = np.hypot(xs[:, None] - stars.x_px[None, :], ys[:, None] - stars.y_px[None, :]).min(axis=1)
            clear_of_stars = nearest_star_px >= separation_px
        for x, y in zip(xs[clear_of_stars], ys[clear_of_stars], strict=True):
            if len(placed_x) < n_positions and all(math.hypot(x - px, y - py) >= separation_px
                                                   for px, py in zip(placed_x, placed_y, strict=True)):  # fmt: skip
                placed_x.append(float(x))
                placed_y.append(float(y))
    if len(placed_x) < n_positions:
        raise ValueError(f"cannot place {n_positions} isolated transients on a {shape_px} detector")
    return placed_x, placed_y

"""The simulator's sky: stars with sky positions, seen through a WCS.

Stars live on the sky, HTM level 10 trixel by trixel (``STAR_HTM_LEVEL``), deterministic from the
trixel: a raw shows the ones its (true) WCS puts on it, wherever the telescope points and however
the camera is rotated; a template is the same stars on its own TAN grid (one per level-9 trixel,
``sky.TEMPLATE_HTM_LEVEL``, north up); the reference catalogue is the same stars with their sky
positions and fluxes in nJy. A raw's header carries the WCS the telescope believes (the NextVisit's
pointing, ``sky.detector_wcs``); the image is rendered through that WCS moved by a pointing error
(1 arcsec rms per axis) and turned by a rotation error (10 arcsec rms), which the astrometric fit
must find. Seeing varies from visit to visit (3.0-4.2 px FWHM; templates 3.0 px).

The simulation is self-similar in the image size: the pixel scale is the detector's width over the
image's columns (``sky.pixel_scale_arcsec``), and star densities are per pixel, so a 512 px image
shows as many stars per pixel as a 4k one. A central repository is seeded for one image size.

Fluxes: a star's ``flux_e`` is what a 30 s exposure at the nominal zero point
(``NOMINAL_ZERO_POINT_MAG``, 1 e-/s) collects; the refcat holds it in nJy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS
from lsst.sphgeom import ConvexPolygon, HtmPixelization, LonLat, UnitVector3d

from pp_devkit.synth import (
    READ_NOISE_E,
    STAR_COUNT_SLOPE,
    STAR_FLUX_RANGE_E,
    TEMPLATE_N_EXPOSURES,
    TEMPLATE_SEEING_FWHM_PX,
    TEMPLATE_SKY_LEVEL_E,
    StarField,
    seed_for,
)
from prompt_processing.imaging.psf import FloatImage, add_point_sources, sigma_from_fwhm
from prompt_processing.model import sky
from prompt_processing.model.instruments import Instrument

SKY_STAR_DENSITY_PER_MPIX = 1000.0  # stars per million pixels (the sky is self-similar: see above)
STAR_HTM_LEVEL = 10  # stars are drawn trixel by trixel at this level (~0.09 deg across)
NOMINAL_ZERO_POINT_MAG = 28.0
POINTING_ERROR_ARCSEC = 1.0  # rms per axis, the same for all detectors of a visit
ROTATION_ERROR_ARCSEC = 10.0  # rms of the camera angle's error
SEEING_RANGE_PX = (3.0, 4.2)  # a visit's PSF FWHM, uniform
REFERENCE_EXPOSURE_S = 30.0
_PADDING_ARCSEC = 10.0


@dataclass(frozen=True, eq=False)
class SkyStars:
    """Stars: sky positions (deg) and the e- a 30 s exposure at the nominal zero point collects."""

    ra_deg: np.ndarray
    dec_deg: np.ndarray
    flux_e: np.ndarray

    def __len__(self) -> int:
        return len(self.ra_deg)

    @staticmethod
    def concatenate(parts: list[SkyStars]) -> SkyStars:
        return SkyStars(*(np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros(0)
                          for f in ("ra_deg", "dec_deg", "flux_e")))  # fmt: skip


def trixel_stars(trixel: int, *, density_per_deg2: float) -> SkyStars:
    """The stars of one level-10 trixel: a Poisson number, uniform on the sphere inside it, Galactic-like
    counts N(>F) ~ F^-0.75. The same for the same trixel and density."""
    triangle = HtmPixelization(STAR_HTM_LEVEL).triangle(trixel)
    rng = np.random.default_rng(seed_for("sky-stars", trixel, density_per_deg2))
    box = triangle.getBoundingBox()
    ra_lo, ra_hi = box.getLon().getA().asDegrees(), box.getLon().getB().asDegrees()
    if ra_hi < ra_lo:
        ra_hi += 360.0
    dec_lo, dec_hi = box.getLat().getA().asDegrees(), box.getLat().getB().asDegrees()
    box_area_deg2 = (ra_hi - ra_lo) * (math.sin(math.radians(dec_hi)) - math.sin(math.radians(dec_lo))) * 180 / math.pi
    n_box = int(rng.poisson(density_per_deg2 * box_area_deg2))
    ra = rng.uniform(ra_lo, ra_hi, n_box) % 360.0
    dec = np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(dec_lo)), math.sin(math.radians(dec_hi)), n_box)))
    flux_min, flux_max = STAR_FLUX_RANGE_E
    tail = 1.0 - (flux_min / flux_max) ** STAR_COUNT_SLOPE
    flux = flux_min * (1.0 - rng.uniform(0.0, 1.0, n_box) * tail) ** (-1.0 / STAR_COUNT_SLOPE)
    inside = np.array([triangle.contains(UnitVector3d(LonLat.fromDegrees(a, d))) for a, d in zip(ra, dec, strict=True)],
                      dtype=bool)  # fmt: skip
    return SkyStars(ra[inside], dec[inside], flux[inside])


def density_per_deg2(pixel_scale_arcsec: float, density_per_mpix: float = SKY_STAR_DENSITY_PER_MPIX) -> float:
    """Stars per deg2 that put ``density_per_mpix`` on a million pixels of this scale."""
    return density_per_mpix / 1e6 * (3600.0 / pixel_scale_arcsec) ** 2


def stars_on(wcs: WCS, shape_px: tuple[int, int], *, density: float) -> tuple[SkyStars, np.ndarray, np.ndarray]:
    """The stars ``wcs`` puts on an image of ``shape_px`` (rows, columns), padded by a PSF's reach:
    the stars and their pixel positions (x, y)."""
    stars = SkyStars.concatenate([trixel_stars(t, density_per_deg2=density) for t in trixels_under(wcs, shape_px)])
    if not len(stars):
        return stars, np.zeros(0), np.zeros(0)
    x_px, y_px = wcs.world_to_pixel_values(stars.ra_deg, stars.dec_deg)
    rows, columns = shape_px
    margin = 10.0
    keep = (x_px > -margin) & (x_px < columns + margin) & (y_px > -margin) & (y_px < rows + margin)
    kept = SkyStars(stars.ra_deg[keep], stars.dec_deg[keep], stars.flux_e[keep])
    return kept, np.asarray(x_px)[keep], np.asarray(y_px)[keep]


def trixels_under(wcs: WCS, shape_px: tuple[int, int], level: int = STAR_HTM_LEVEL) -> list[int]:
    """The HTM trixels at ``level`` that may overlap the image (its corners, padded)."""
    rows, columns = shape_px
    pad = _PADDING_ARCSEC / 3600 / abs(float(wcs.proj_plane_pixel_scales()[0].value))
    corners = [(-pad, -pad), (columns + pad, -pad), (columns + pad, rows + pad), (-pad, rows + pad)]
    points = [wcs.pixel_to_world_values(x, y) for x, y in corners]
    polygon = ConvexPolygon([UnitVector3d(LonLat.fromDegrees(float(ra), float(dec))) for ra, dec in points])
    return [i for begin, end in HtmPixelization(level).envelope(polygon) for i in range(begin, end)]


def render_stars(image: FloatImage, x_px: np.ndarray, y_px: np.ndarray, flux_e: np.ndarray, fwhm_px: float) -> None:
    """Add the stars to ``image`` (e-), Gaussian PSF of ``fwhm_px``."""
    if len(x_px):
        add_point_sources(image, x_px, y_px, flux_e, sigma_px=sigma_from_fwhm(fwhm_px))


@dataclass(frozen=True, eq=False)
class Scene:
    """What a raw shows: its stars (pixel positions through the true WCS), the true WCS, the seeing."""

    stars: StarField
    true_wcs: WCS
    seeing_fwhm_px: float
    pointing_error_arcsec: tuple[float, float]


def raw_scene(instrument: Instrument, detector: int, body: Mapping[str, Any], shape_px: tuple[int, int],
              *, rng_seed: int = 0, density_per_mpix: float = SKY_STAR_DENSITY_PER_MPIX) -> Scene:  # fmt: skip
    """The stars a raw of ``detector`` shows for the visit whose NextVisit is ``body``: its nominal WCS
    (``sky.detector_wcs``) moved by the visit's pointing error and turned by its rotation error."""
    ra, dec = (float(v) for v in body["position"])
    angle = float(body["cameraAngle"])
    rng = np.random.default_rng(seed_for("pointing", rng_seed, body["groupId"]))
    d_ra, d_dec = rng.normal(0.0, POINTING_ERROR_ARCSEC, 2)
    d_angle = rng.normal(0.0, ROTATION_ERROR_ARCSEC) / 3600
    seeing = float(rng.uniform(*SEEING_RANGE_PX))
    true_dec = dec + d_dec / 3600
    true_ra = ra + d_ra / 3600 / math.cos(math.radians(true_dec))
    wcs = sky.detector_wcs(instrument, detector, true_ra, true_dec, angle + d_angle, shape_px)
    scale = sky.pixel_scale_arcsec(instrument, detector, shape_px[1])
    stars, x_px, y_px = stars_on(wcs, shape_px, density=density_per_deg2(scale, density_per_mpix))
    return Scene(StarField(x_px=x_px, y_px=y_px, flux_e=stars.flux_e), wcs, seeing, (float(d_ra), float(d_dec)))


def template_wcs(trixel: int, pixel_scale_arcsec: float) -> WCS:
    """A level-9 trixel's template grid: TAN at its centre, north up, east left, covering it with margin."""
    triangle = HtmPixelization(sky.TEMPLATE_HTM_LEVEL).triangle(trixel)
    centre = LonLat(triangle.getCentroid())
    ra0, dec0 = centre.getLon().asDegrees() % 360.0, centre.getLat().asDegrees()
    radius_deg = max(_separation_deg(centre, LonLat(v)) for v in triangle.getVertices()) + _PADDING_ARCSEC / 3600
    size = 2 * math.ceil(radius_deg * 3600 / pixel_scale_arcsec) + 1
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.crpix = [(size + 1) / 2, (size + 1) / 2]
    scale = pixel_scale_arcsec / 3600
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    wcs.pixel_shape = (size, size)
    return wcs


def sky_template(trixel: int, pixel_scale_arcsec: float, *, seeing_fwhm_px: float = TEMPLATE_SEEING_FWHM_PX,
                 density_per_mpix: float = SKY_STAR_DENSITY_PER_MPIX) -> tuple[FloatImage, WCS]:  # fmt: skip
    """The deep coadd (e-, sky-subtracted) of a level-9 trixel on its own grid, and that grid's WCS."""
    wcs = template_wcs(trixel, pixel_scale_arcsec)
    columns, rows = wcs.pixel_shape
    _stars, x_px, y_px = stars_on(wcs, (rows, columns), density=density_per_deg2(pixel_scale_arcsec, density_per_mpix))
    image = np.zeros((rows, columns), dtype=np.float32)
    render_stars(image, x_px, y_px, _stars.flux_e, seeing_fwhm_px)
    rng = np.random.default_rng(seed_for("sky-template", trixel, pixel_scale_arcsec, seeing_fwhm_px))
    variance = image.clip(min=0.0)
    variance += np.float32(TEMPLATE_SKY_LEVEL_E + READ_NOISE_E**2)
    variance /= np.float32(TEMPLATE_N_EXPOSURES)
    image += rng.standard_normal((rows, columns), dtype=np.float32) * np.sqrt(variance)
    return image, wcs


def refcat_shard(trixel7: int, pixel_scale_arcsec: float,
                 density_per_mpix: float = SKY_STAR_DENSITY_PER_MPIX) -> Table:  # fmt: skip
    """The reference catalogue of a level-7 trixel: every star of its level-10 children, with its sky
    position and flux in nJy (``id``, ``coord_ra``, ``coord_dec`` in deg, ``flux_nJy``)."""
    first = trixel7 << (2 * (STAR_HTM_LEVEL - sky.REFCAT_HTM_LEVEL))
    density = density_per_deg2(pixel_scale_arcsec, density_per_mpix)
    stars = SkyStars.concatenate([trixel_stars(t, density_per_deg2=density) for t in range(first, first + 64)])
    njy_per_e = 10 ** ((31.4 - NOMINAL_ZERO_POINT_MAG) / 2.5) / REFERENCE_EXPOSURE_S
    return Table({"id": np.arange(len(stars), dtype=np.int64) + (trixel7 << 20), "coord_ra": stars.ra_deg,
                  "coord_dec": stars.dec_deg, "flux_nJy": stars.flux_e * njy_per_e})  # fmt: skip


def _separation_deg(a: LonLat, b: LonLat) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, UnitVector3d(a).dot(UnitVector3d(b))))))

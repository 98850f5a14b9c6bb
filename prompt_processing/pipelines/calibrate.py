"""CalibrateImageTask: one visit-detector's snaps combined, background subtracted, stars detected,
the PSF's width and model (an elliptical Gaussian) measured and the stars measured with it, the WCS
fitted against the reference catalogue and the zero point set.

The astrometric fit starts from the detector's nominal TAN WCS for the exposure's pointing and
rotation (``model.sky.detector_wcs``: what the raw's header says) and finds the pointing error; the
zero point is the matched stars' reference magnitudes against their count rates
(``imaging.calibration``). Too few stars, or none matching the reference catalogue, fail the task
(``CalibrationError``). The summary (``prompt_visit_summary``) carries the WCS, zero point, PSF width
and model (``psf_model_px2``: xx, yy, xy) and background rms, with the fit's quality, for the tasks downstream.
"""

from __future__ import annotations

from typing import Any

import lsst.pex.config as pex_config
import lsst.pipe.base.connectionTypes as ct
import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.wcs import WCS
from lsst.images import Box, DetectorFrame, Image, SkyProjection
from lsst.pipe.base import (
    InputQuantizedConnection,
    OutputQuantizedConnection,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    QuantumContext,
    Struct,
)

from prompt_processing.imaging.algorithms import DEFAULT_KERNEL_FWHM_PX, background, detect_sources
from prompt_processing.imaging.calibration import (
    CalibrationError,
    fit_wcs,
    fit_zero_point,
    psf_fwhm_px,
    psf_model_px2,
)
from prompt_processing.imaging.catalogue import catalogue_to_arrow, measure, windowed_centroids
from prompt_processing.model import sky
from prompt_processing.model.instruments import get_instrument
from prompt_processing.pipelines.connections import VISIT_DETECTOR

ASTROMETRY_MIN_SNR = 10.0  # stars the astrometric fit rests on


class CalibrateImageConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    post_isr_images = ct.Input(name="post_isr_image", storageClass="ImageV2", multiple=True,
                               dimensions=("instrument", "exposure", "detector"),
                               doc="The visit's snaps after ISR (e-).")  # fmt: skip
    refcats = ct.Input(name="pp_sim_refcat", storageClass="ArrowAstropy", multiple=True, dimensions=("htm7",),
                       doc="Reference shards overlapping the detector (coord_ra, coord_dec, flux_nJy).")  # fmt: skip
    image = ct.Output(name="preliminary_visit_image", storageClass="ImageV2", dimensions=VISIT_DETECTOR,
                      doc="Background-subtracted visit image (e-) with its sky projection.")  # fmt: skip
    stars = ct.Output(name="single_visit_star", storageClass="ArrowTable", dimensions=VISIT_DETECTOR,
                      doc="Sources detected on the visit image.")  # fmt: skip
    summary = ct.Output(name="prompt_visit_summary", storageClass="StructuredDataDict", dimensions=VISIT_DETECTOR,
                        doc="Background rms (e-), PSF, zero point (mag, 1 e-/s), WCS cards, exposure (s).")  # fmt: skip


class CalibrateImageConfig(PipelineTaskConfig, pipelineConnections=CalibrateImageConnections):
    threshold_sigma = pex_config.Field[float](doc="Detection threshold (point-source S/N).", default=5.0)
    kernel_fwhm_px = pex_config.Field[float](doc="Detection filter FWHM (px); the PSF is measured on what it finds.",
                                             default=DEFAULT_KERNEL_FWHM_PX)  # fmt: skip
    search_arcsec = pex_config.Field[float](doc="Largest pointing error the astrometric fit looks for.", default=6.0)
    min_matches = pex_config.Field[int](doc="Fewest stars matched to the reference catalogue.", default=10)


class CalibrateImageTask(PipelineTask):
    """Snaps averaged (pixel by pixel), background subtracted, stars detected, WCS and zero point attached."""

    ConfigClass = CalibrateImageConfig
    _DefaultName = "calibrate"
    config: CalibrateImageConfig

    def runQuantum(self, butlerQC: QuantumContext, inputRefs: InputQuantizedConnection,
                   outputRefs: OutputQuantizedConnection) -> None:  # fmt: skip
        exposure = inputRefs.post_isr_images[0].dataId.records["exposure"]
        detector = int(outputRefs.image.dataId["detector"])
        images = [butlerQC.get(ref) for ref in inputRefs.post_isr_images]
        refcat = vstack([butlerQC.get(ref) for ref in inputRefs.refcats]) if inputRefs.refcats else None
        pointing = (float(exposure.tracking_ra), float(exposure.tracking_dec), float(exposure.sky_angle))
        outputs = self.run(images, refcat, instrument=str(exposure.instrument), detector=detector, pointing=pointing,
                           exposure_time_s=float(exposure.exposure_time))  # fmt: skip
        butlerQC.put(outputs, outputRefs)

    def run(self, post_isr_images: list[Image], refcat: Table | None, *, instrument: str, detector: int,
            pointing: tuple[float, float, float], exposure_time_s: float, **_: Any) -> Struct:  # fmt: skip
        arrays = [image.array for image in post_isr_images]
        combined = arrays[0] if len(arrays) == 1 else np.mean(arrays, axis=0, dtype=np.float32)
        calexp, rms_e = background(combined)
        first = detect_sources(calexp, rms_e, threshold_sigma=self.config.threshold_sigma,
                               kernel_fwhm_px=self.config.kernel_fwhm_px)  # fmt: skip
        fwhm_px = psf_fwhm_px(calexp, first)
        psf_model = psf_model_px2(calexp, first, fwhm_px)
        # Measured again with apertures of the measured PSF, at windowed centroids; not detected again: a
        # matched filter a little off the PSF loses a few percent of S/N at threshold, a second pass ~0.5 s at 4k.
        x_px, y_px = first.x_px.copy(), first.y_px.copy()
        fitted = first.snr >= ASTROMETRY_MIN_SNR  # the stars the astrometric fit uses (0.1 s for the rest at 4k)
        x_px[fitted], y_px[fitted] = windowed_centroids(calexp, x_px[fitted], y_px[fitted], fwhm_px=fwhm_px)
        stars = measure(calexp, rms_e, x_px, y_px, kernel_fwhm_px=fwhm_px)
        camera = get_instrument(instrument)
        if camera is None or refcat is None:
            raise CalibrationError(f"no reference catalogue for {instrument} detector {detector}"
                                   if camera else f"unknown instrument {instrument!r}")  # fmt: skip
        nominal = sky.detector_wcs(camera, detector, *pointing, calexp.shape)
        ra, dec = np.asarray(refcat["coord_ra"], dtype=float), np.asarray(refcat["coord_dec"], dtype=float)
        fit = fit_wcs(stars, ra, dec, nominal, search_arcsec=self.config.search_arcsec, min_snr=ASTROMETRY_MIN_SNR,
                      min_matches=self.config.min_matches)  # fmt: skip
        zero_point, zp_rms, zp_stars = fit_zero_point(
            stars.flux_e[fit.star_index], exposure_time_s, np.asarray(refcat["flux_nJy"], dtype=float)[fit.ref_index])
        summary = {"background_rms_e": rms_e, "psf_fwhm_px": fwhm_px, "psf_model_px2": list(psf_model),
                   "zero_point_mag": zero_point,
                   "zero_point_rms_mag": zp_rms, "zero_point_stars": zp_stars, "exposure_time_s": exposure_time_s,
                   "n_stars": len(stars), "n_snaps": len(arrays), "astrometry_matches": fit.n_matched,
                   "astrometry_rms_arcsec": fit.rms_arcsec, "pointing_offset_arcsec": list(fit.offset_arcsec),
                   "wcs": wcs_cards(fit.wcs)}  # fmt: skip
        self.metadata["astrometry_rms_arcsec"] = fit.rms_arcsec
        self.metadata["zero_point_mag"] = zero_point
        return Struct(image=with_projection(calexp, fit.wcs, instrument, detector), stars=catalogue_to_arrow(stars),
                      summary=summary)  # fmt: skip


def wcs_cards(wcs: WCS) -> dict[str, Any]:
    """A WCS and its image size as FITS cards (a JSON-friendly dict); ``wcs_from_cards`` reads it back."""
    cards = {key: value for key, value in wcs.to_header(relax=True).items() if key}
    if wcs.pixel_shape is not None:
        cards["NAXIS1"], cards["NAXIS2"] = (int(n) for n in wcs.pixel_shape)
    return cards


def wcs_from_cards(cards: dict[str, Any]) -> WCS:
    """The WCS of ``wcs_cards``, with its ``pixel_shape`` (columns, rows)."""
    size = (cards.get("NAXIS1"), cards.get("NAXIS2"))
    wcs = WCS(fits.Header({k: v for k, v in cards.items() if k not in ("NAXIS1", "NAXIS2")}))
    if None not in size:
        wcs.pixel_shape = size
    return wcs


def with_projection(array: np.ndarray, wcs: WCS, instrument: str, detector: int) -> Image:
    """``array`` as an lsst-images Image carrying ``wcs`` as its sky projection."""
    rows, columns = array.shape
    frame = DetectorFrame(instrument=instrument, detector=detector, bbox=Box.factory[0:rows, 0:columns])
    return Image(array, sky_projection=SkyProjection.from_fits_wcs(wcs, frame))

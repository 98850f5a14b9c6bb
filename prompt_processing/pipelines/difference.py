"""Image differencing: GetTemplateTask, SubtractImagesTask, DetectAndMeasureTask.

The simulator's templates share their detector's pixel grid (no warp yet): ``GetTemplateTask`` takes
the template of the HTM7 trixel holding the detector's centre (by the visit image's WCS) among those
overlapping it, and says which it could not use.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lsst.pex.config as pex_config
import lsst.pipe.base.connectionTypes as ct
from lsst.images import Image
from lsst.pipe.base import (
    InputQuantizedConnection,
    OutputQuantizedConnection,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    QuantumContext,
    Struct,
)

from prompt_processing.imaging.algorithms import (
    DEFAULT_KERNEL_FWHM_PX,
    background,
    catalogue_to_arrow,
    detect_transients,
    difference_rms,
    subtract_template,
)
from prompt_processing.imaging.subtraction import Difference
from prompt_processing.model import sky
from prompt_processing.pipelines.calibrate import wcs_from_cards
from prompt_processing.pipelines.connections import VISIT_DETECTOR, visit_connection


class GetTemplateConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    templates = ct.Input(name="template_coadd", storageClass="ImageV2", multiple=True,
                         dimensions=("instrument", "detector", "htm7"),
                         doc="Templates whose HTM7 trixel overlaps the detector.")  # fmt: skip
    summary = visit_connection("prompt_visit_summary", "StructuredDataDict", "The visit image's WCS.")
    template = ct.Output(name="template_detector", storageClass="ImageV2", dimensions=VISIT_DETECTOR,
                         doc="The template on the visit image's pixel grid.")  # fmt: skip


class GetTemplateConfig(PipelineTaskConfig, pipelineConnections=GetTemplateConnections):
    pass


class GetTemplateTask(PipelineTask):
    ConfigClass = GetTemplateConfig
    _DefaultName = "template"

    def runQuantum(self, butlerQC: QuantumContext, inputRefs: InputQuantizedConnection,
                   outputRefs: OutputQuantizedConnection) -> None:  # fmt: skip
        by_trixel = {int(ref.dataId["htm7"]): ref for ref in inputRefs.templates}
        summary = butlerQC.get(inputRefs.summary)
        wcs = wcs_from_cards(summary["wcs"])
        columns, rows = wcs.pixel_shape
        ra_deg, dec_deg = wcs.pixel_to_world_values((columns - 1) / 2, (rows - 1) / 2)
        centre = sky.htm_index(float(ra_deg), float(dec_deg))
        if centre not in by_trixel:
            raise ValueError(f"no template at the detector's centre (htm7 {centre}); overlapping: {sorted(by_trixel)}")
        butlerQC.put(Struct(template=butlerQC.get(by_trixel[centre])), outputRefs)


class SubtractImagesConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    science = visit_connection("preliminary_visit_image", "ImageV2", "The visit image (e-).")
    template = visit_connection("template_detector", "ImageV2", "The template on its pixel grid.")
    summary = visit_connection("prompt_visit_summary", "StructuredDataDict", "Background rms of the visit image.")
    difference = ct.Output(name="difference_image", storageClass="ImageV2", dimensions=VISIT_DETECTOR,
                           doc="science - matched template, background subtracted; NaN where undefined.")  # fmt: skip
    matched = ct.Output(name="template_matched", storageClass="ImageV2", dimensions=VISIT_DETECTOR,
                        doc="The PSF-matched, scaled template: the light that was subtracted.")  # fmt: skip
    difference_summary = ct.Output(name="difference_summary", storageClass="StructuredDataDict",
                                   dimensions=VISIT_DETECTOR,
                                   doc="rms_e of the difference, kernel sigma, scale, what was convolved.")  # fmt: skip


class SubtractImagesConfig(PipelineTaskConfig, pipelineConnections=SubtractImagesConnections):
    gain_e_per_adu = pex_config.Field[float](doc="Gain, for the Poisson noise of the subtracted light.", default=1.0)


class SubtractImagesTask(PipelineTask):
    """PSF-matched subtraction (``imaging.subtraction.subtract_template``), then the difference's background."""

    ConfigClass = SubtractImagesConfig
    _DefaultName = "subtract"
    config: SubtractImagesConfig

    def run(self, science: Image, template: Image, summary: dict[str, Any], **_: Any) -> Struct:
        if science.array.shape != template.array.shape:
            raise ValueError(f"template {template.array.shape} is not on the science grid {science.array.shape}")
        diff: Difference = subtract_template(science.array, template.array, science_rms=summary["background_rms_e"],
                                             gain_e_per_adu=self.config.gain_e_per_adu)  # fmt: skip
        image, rms_e = background(diff.image)
        diff = replace(diff, image=image)
        return Struct(difference=Image(diff.image), matched=Image(diff.model), difference_summary={
            "rms_e": rms_e, "scale": diff.scale, "kernel_sigma_px": diff.kernel_sigma_px,
            "convolved": diff.convolved, "n_stars": diff.n_stars})  # fmt: skip


class DetectAndMeasureConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    difference = visit_connection("difference_image", "ImageV2", "The difference image (e-).")
    matched = visit_connection("template_matched", "ImageV2", "The subtracted light (e-).")
    difference_summary = visit_connection("difference_summary", "StructuredDataDict", "rms of the difference.")
    dia_sources = ct.Output(name="dia_source_detector", storageClass="ArrowTable", dimensions=VISIT_DETECTOR,
                            doc="DIA sources (positive and negative), before association.")  # fmt: skip


class DetectAndMeasureConfig(PipelineTaskConfig, pipelineConnections=DetectAndMeasureConnections):
    threshold_sigma = pex_config.Field[float](doc="Detection threshold (point-source S/N).", default=5.0)
    kernel_fwhm_px = pex_config.Field[float](doc="Detection filter FWHM (px).", default=DEFAULT_KERNEL_FWHM_PX)
    gain_e_per_adu = pex_config.Field[float](doc="Gain, for the Poisson noise of the subtracted light.", default=1.0)


class DetectAndMeasureTask(PipelineTask):
    """DIA sources: detected, measured, dipoles and bright-star residuals rejected (``detect_transients``)."""

    ConfigClass = DetectAndMeasureConfig
    _DefaultName = "detect"
    config: DetectAndMeasureConfig

    def run(self, difference: Image, matched: Image, difference_summary: dict[str, Any], **_: Any) -> Struct:
        noise = difference_rms(difference_summary["rms_e"], matched.array, gain_e_per_adu=self.config.gain_e_per_adu)
        found = detect_transients(difference.array, noise, threshold_sigma=self.config.threshold_sigma,
                                  kernel_fwhm_px=self.config.kernel_fwhm_px, reference=matched.array)  # fmt: skip
        return Struct(dia_sources=catalogue_to_arrow(found))

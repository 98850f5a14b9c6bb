"""Image differencing: GetTemplateTask, SubtractImagesTask, DetectAndMeasureTask.

``GetTemplateTask`` warps the templates whose HTM9 cells overlap the detector onto the visit image's
fitted WCS and stitches them; it reads each template's projection first and then only the cutout the
detector's still-empty parts need (none when it adds nothing), not the whole deep image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import lsst.pex.config as pex_config
import lsst.pipe.base.connectionTypes as ct
import numpy as np
import pyarrow as pa
from lsst.daf.butler import DataCoordinate, DatasetRef, DatasetType
from lsst.images import Box, Image
from lsst.pipe.base import (
    InputQuantizedConnection,
    OutputQuantizedConnection,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    QuantumContext,
    Struct,
)
from scipy.ndimage import uniform_filter

from prompt_processing.imaging.algorithms import (
    background,
    difference_rms,
    subtract_template,
)
from prompt_processing.imaging.dia import detect_dia_sources
from prompt_processing.imaging.psf import FWHM_PER_SIGMA
from prompt_processing.imaging.subtraction import Difference
from prompt_processing.imaging.warp import apply_warp, plan_warp
from prompt_processing.model import sky
from prompt_processing.pipelines.calibrate import wcs_from_cards, with_projection
from prompt_processing.pipelines.connections import VISIT_DETECTOR, visit_connection


def templates_overlapping(dataset_type: DatasetType, registry: Any, data_id: DataCoordinate,
                          collections: Sequence[str]) -> list[DatasetRef]:  # fmt: skip
    """The templates whose HTM9 cell overlaps the visit-detector's region (the registry joins regions with its
    common skypix level, HTM7, only: the cells are listed here, as a prerequisite lookup)."""
    region = data_id.region
    if region is None:
        return []
    cells = sky.htm_overlapping(region, sky.TEMPLATE_HTM_LEVEL)
    return list(registry.queryDatasets(dataset_type, collections=collections, instrument=data_id["instrument"],
                                       where="htm9 IN (cells)", bind={"cells": cells}, findFirst=True))  # fmt: skip


class GetTemplateConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    templates = ct.PrerequisiteInput(name="pp_sim_template", storageClass="ImageV2", multiple=True,
                                     dimensions=("instrument", "htm9"), lookupFunction=templates_overlapping,
                                     deferLoad=True,
                                     doc="Templates (each on its own projection) overlapping it.")  # fmt: skip
    summary = visit_connection("prompt_visit_summary", "StructuredDataDict", "The visit image's fitted WCS.")
    template = ct.Output(name="template_detector", storageClass="ImageV2", dimensions=VISIT_DETECTOR,
                         doc="The templates warped onto the visit image's grid; NaN where none covers.")  # fmt: skip


class GetTemplateConfig(PipelineTaskConfig, pipelineConnections=GetTemplateConnections):
    min_coverage = pex_config.Field[float](
        doc="Least fraction of the detector the templates must cover (less is a failure).", default=0.05)


class GetTemplateTask(PipelineTask):
    """The overlapping templates warped (cubic splines) onto the visit image's WCS and stitched."""

    ConfigClass = GetTemplateConfig
    _DefaultName = "template"
    config: GetTemplateConfig

    def runQuantum(self, butlerQC: QuantumContext, inputRefs: InputQuantizedConnection,
                   outputRefs: OutputQuantizedConnection) -> None:  # fmt: skip
        summary = butlerQC.get(inputRefs.summary)
        wcs = wcs_from_cards(summary["wcs"])
        columns, rows = wcs.pixel_shape
        stitched = np.full((rows, columns), np.nan, dtype=np.float32)
        read_px = 0
        for ref in sorted(inputRefs.templates, key=lambda r: int(r.dataId["htm9"])):
            handle = butlerQC.get(ref)
            bbox = handle.get(component="bbox")
            plan = plan_warp(stitched, wcs, bbox.shape, handle.get(component="sky_projection").as_fits_wcs(bbox))
            if plan is None:
                continue
            lo_y, hi_y, lo_x, hi_x = plan.crop
            y0, x0 = bbox.y.start, bbox.x.start
            cutout = handle.get(parameters={"bbox": Box.factory[y0 + lo_y : y0 + hi_y, x0 + lo_x : x0 + hi_x]})
            apply_warp(stitched, plan, cutout.array)
            read_px += cutout.array.size
        self.metadata["template_read_px"] = read_px
        coverage = float(np.isfinite(stitched).mean())
        self.metadata["coverage"] = coverage
        if coverage < self.config.min_coverage:
            raise ValueError(f"the templates cover {coverage:.1%} of the detector, less than min_coverage "
                             f"{self.config.min_coverage:.0%}")  # fmt: skip
        data_id = outputRefs.template.dataId
        butlerQC.put(Struct(template=with_projection(stitched, wcs, str(data_id["instrument"]),
                                                     int(data_id["detector"]))), outputRefs)  # fmt: skip


class SubtractImagesConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    science = visit_connection("preliminary_visit_image", "ImageV2", "The visit image (e-).")
    template = visit_connection("template_detector", "ImageV2", "The template on its pixel grid.")
    summary = visit_connection("prompt_visit_summary", "StructuredDataDict", "Background rms of the visit image.")
    stars = visit_connection("single_visit_star", "ArrowTable", "Sources on the visit image (isolation of fit stars).")
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

    def run(self, science: Image, template: Image, summary: dict[str, Any], stars: pa.Table, **_: Any) -> Struct:
        if science.array.shape != template.array.shape:
            raise ValueError(f"template {template.array.shape} is not on the science grid {science.array.shape}")
        neighbours = (stars["x_px"].to_numpy(), stars["y_px"].to_numpy())
        diff: Difference = subtract_template(science.array, template.array, science_rms=summary["background_rms_e"],
                                             gain_e_per_adu=self.config.gain_e_per_adu,
                                             neighbours_xy=neighbours)  # fmt: skip
        image, rms_e = background(_blank_undefined(diff.image, science.array, template.array, summary["psf_fwhm_px"]))
        diff = replace(diff, image=image)
        return Struct(difference=Image(diff.image), matched=Image(diff.model), difference_summary={
            "rms_e": rms_e, "scale": diff.scale, "kernel_sigma_px": diff.kernel_sigma_px,
            "convolved": diff.convolved, "n_stars": diff.n_stars})  # fmt: skip


def _blank_undefined(image: np.ndarray, science: np.ndarray, template: np.ndarray, fwhm_px: float) -> np.ndarray:
    """``image`` with NaN where the science image had no value (saturated, dead) or no template covered,
    grown by three PSF widths (the light there was not subtracted, and the matching kernel reached across
    the border)."""
    missing = ~np.isfinite(template) | ~np.isfinite(science)
    if missing.any():
        reach = 2 * math.ceil(3 * fwhm_px) + 1
        grown = uniform_filter(missing.astype(np.float32), size=reach) > 0
        image = np.where(grown, np.float32(np.nan), image)
    return image


class DetectAndMeasureConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    difference = visit_connection("difference_image", "ImageV2", "The difference image (e-).")
    matched = visit_connection("template_matched", "ImageV2", "The subtracted light (e-).")
    difference_summary = visit_connection("difference_summary", "StructuredDataDict", "rms of the difference.")
    summary = visit_connection("prompt_visit_summary", "StructuredDataDict", "The visit image's PSF width and model.")
    dia_sources = ct.Output(name="dia_source_detector", storageClass="ArrowTable", dimensions=VISIT_DETECTOR,
                            doc="DIA sources (positive, negative, dipoles), with shapes; not associated.")  # fmt: skip


class DetectAndMeasureConfig(PipelineTaskConfig, pipelineConnections=DetectAndMeasureConnections):
    threshold_sigma = pex_config.Field[float](
        doc="Detection threshold (point-source S/N). At 5.0 (Rubin's, which then relies on a reliability "
            "classifier) pure white noise alone gives 0.8-1.25 false DIA sources per 4k x 4k image, at 5.5 "
            "0-0.13 (BENCHMARKS.md).", default=5.5)  # fmt: skip
    gain_e_per_adu = pex_config.Field[float](doc="Gain, for the Poisson noise of the subtracted light.", default=1.0)


class DetectAndMeasureTask(PipelineTask):
    """DIA sources: detected, measured (flux, centroid, shape), dipoles flagged, bright-star residuals rejected
    (``imaging.dia.detect_dia_sources``)."""

    ConfigClass = DetectAndMeasureConfig
    _DefaultName = "detect"
    config: DetectAndMeasureConfig

    def run(self, difference: Image, matched: Image, difference_summary: dict[str, Any], summary: dict[str, Any],
            **_: Any) -> Struct:  # fmt: skip
        noise = difference_rms(difference_summary["rms_e"], matched.array, gain_e_per_adu=self.config.gain_e_per_adu)
        found = detect_dia_sources(difference.array, noise, threshold_sigma=self.config.threshold_sigma,
                                   kernel_fwhm_px=difference_fwhm_px(summary, difference_summary),
                                   reference=matched.array,
                                   psf_covariance_px2=difference_psf_px2(summary, difference_summary))  # fmt: skip
        self.metadata["n_dipoles"] = int(found.measurements.is_dipole.sum())
        return Struct(dia_sources=found.to_arrow())


def difference_fwhm_px(summary: dict[str, Any], difference_summary: dict[str, Any]) -> float:
    """The difference image's PSF FWHM: the visit image's, broadened by the matching kernel when that was
    applied to it (a science image sharper than the template)."""
    fwhm = float(summary["psf_fwhm_px"])
    if difference_summary["convolved"] == "science":
        fwhm = math.hypot(fwhm, float(difference_summary["kernel_sigma_px"]) * FWHM_PER_SIGMA)
    return fwhm


def difference_psf_px2(summary: dict[str, Any], difference_summary: dict[str, Any]) -> tuple[float, float, float]:
    """The difference image's PSF model (covariance xx, yy, xy in px^2): the visit image's, broadened by
    the matching kernel's variance when that was applied to it."""
    xx, yy, xy = (float(v) for v in summary["psf_model_px2"])
    if difference_summary["convolved"] == "science":
        kernel_px2 = float(difference_summary["kernel_sigma_px"]) ** 2
        xx, yy = xx + kernel_px2, yy + kernel_px2
    return xx, yy, xy

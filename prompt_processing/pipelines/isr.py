"""IsrTask: instrument signature removal of one exposure of one detector (overscan per amplifier, bias,
gain, flat, saturation)."""

from __future__ import annotations

from typing import Any

import lsst.pex.config as pex_config
import lsst.pipe.base.connectionTypes as ct
import numpy as np
from lsst.images import Image
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct

from prompt_processing.imaging.algorithms import AMP_GRID, isr


class IsrConnections(PipelineTaskConnections, dimensions=("instrument", "exposure", "detector")):
    raw = ct.Input(name="raw", storageClass="ImageV2", dimensions=("instrument", "exposure", "detector"),
                   doc="The detector's raw image (ADU), overscan columns on the right.")  # fmt: skip
    bias = ct.PrerequisiteInput(name="bias", storageClass="ImageV2", dimensions=("instrument", "detector"),
                                isCalibration=True, doc="Bias valid at the exposure's time (ADU).")  # fmt: skip
    flat = ct.PrerequisiteInput(name="flat", storageClass="ImageV2",
                                dimensions=("instrument", "detector", "physical_filter"), isCalibration=True,
                                doc="Flat of the exposure's filter valid at its time (relative response).")  # fmt: skip
    post_isr_image = ct.Output(name="post_isr_image", storageClass="ImageV2",
                               dimensions=("instrument", "exposure", "detector"),
                               doc="Bias-subtracted, flat-fielded (e-); NaN: dead flat, saturated.")  # fmt: skip


class IsrConfig(PipelineTaskConfig, pipelineConnections=IsrConnections):
    gain_e_per_adu = pex_config.Field[float](doc="Detector gain (e-/ADU).", default=1.0)
    saturation_adu = pex_config.Field[float](
        doc="Raw pixels at or above this (the ADC's full scale, 16 bits) are saturated: NaN after ISR.",
        default=65535.0)  # fmt: skip
    amp_rows = pex_config.Field[int](doc="Rows of amplifiers the detector is read through.", default=AMP_GRID[0])
    amp_columns = pex_config.Field[int](doc="Columns of amplifiers; each has its overscan columns beside the "
                                        "imaging area, in this order.", default=AMP_GRID[1])  # fmt: skip


class IsrTask(PipelineTask):
    """(raw - amplifier level from its overscan - bias) * gain / flat, trimmed to the imaging area,
    saturated pixels NaN (``imaging.algorithms.isr``); a raw whose shape does not fit the calibrations'
    is a ValueError."""

    ConfigClass = IsrConfig
    _DefaultName = "isr"
    config: IsrConfig

    def run(self, raw: Image, bias: Image, flat: Image, **_: Any) -> Struct:
        array = isr(raw.array, bias.array, flat.array, gain_e_per_adu=self.config.gain_e_per_adu,
                    saturation_adu=self.config.saturation_adu,
                    amp_grid=(self.config.amp_rows, self.config.amp_columns))  # fmt: skip
        self.metadata["n_saturated"] = int(np.count_nonzero(raw.array[:, : bias.array.shape[1]]
                                                            >= self.config.saturation_adu))  # fmt: skip
        return Struct(post_isr_image=Image(array))

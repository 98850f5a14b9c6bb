"""process: the image work of one visit-detector (ISR, background, detection, difference, transients)."""

from __future__ import annotations

import numpy as np

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.butler.local import Preloaded
from prompt_processing.imaging.algorithms import ProcessResult, process_detector
from prompt_processing.model.errors import NonRetriableError
from tasks.common import step
from tasks.wait_for_images import RawImages


@step("process")
def process(
    ctx: ProcessingContext, clock: StepClock, instrument: str, raws: RawImages, inputs: Preloaded, label: str
) -> ProcessResult:
    """Snaps are averaged, then processed against the template, all read from the local Butler. A raw
    that does not match the calibrations' shape is a NonRetriableError naming ``label``."""
    with clock.timing("process"):
        local = ctx.local_repo(instrument)
        assert inputs.bias and inputs.flat and inputs.template, "preload stops a visit-detector missing one"
        bias, flat, template = (local.read(ref).array for ref in (inputs.bias, inputs.flat, inputs.template))
        images = []
        for snap, ref in enumerate(raws.refs):
            image = local.read(ref).array
            if image.shape != bias.shape:
                raise NonRetriableError(
                    f"{label} snap {snap}: image shape {image.shape} != calibration shape {bias.shape}"
                )
            images.append(image)
        raw = images[0] if len(images) == 1 else np.mean(images, axis=0, dtype=np.float32)
        return process_detector(raw, bias, flat, template)

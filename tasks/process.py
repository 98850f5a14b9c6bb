"""process: the image work of one visit-detector (ISR, background, detection, difference, transients)."""

from __future__ import annotations

import numpy as np

from prompt_processing.activator.context import StepClock
from prompt_processing.imaging.algorithms import ProcessResult, process_detector
from prompt_processing.imaging.fits_io import from_fits_bytes
from prompt_processing.model.errors import NonRetriableError
from tasks.common import step
from tasks.preload import Calibrations


@step("process")
def process(clock: StepClock, raws: list[bytes], calibs: Calibrations, label: str) -> ProcessResult:
    """Snaps are averaged, then processed against the template. A raw that is not a readable
    FITS image, or does not match the calibrations' shape, is a NonRetriableError naming ``label``.
    """
    with clock.timing("process"):
        images = []
        for snap, data in enumerate(raws):
            try:
                image, _header = from_fits_bytes(data)
            except ValueError as exc:
                raise NonRetriableError(f"corrupt FITS for {label} snap {snap}: {exc}") from exc
            if image.shape != calibs.bias.shape:
                raise NonRetriableError(
                    f"{label} snap {snap}: image shape {image.shape} != calibration shape {calibs.bias.shape}"
                )
            images.append(image)
        raw = images[0] if len(images) == 1 else np.mean(images, axis=0, dtype=np.float32)
        return process_detector(raw, calibs.bias, calibs.flat, calibs.template)

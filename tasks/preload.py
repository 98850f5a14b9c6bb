"""preload: calibrations and the template for the detector's predicted sky region."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.adapters import s3
from prompt_processing.imaging.fits_io import from_fits_bytes
from prompt_processing.model import layout
from prompt_processing.model.errors import NonRetriableError
from prompt_processing.model.layout import sky_tile
from tasks.common import step


@dataclass(frozen=True)
class Calibrations:
    bias: npt.NDArray[np.float32]
    flat: npt.NDArray[np.float32]
    template: npt.NDArray[np.float32]
    template_key: str


@step("preload")
def preload(
    ctx: ProcessingContext, clock: StepClock, instrument: str, detector: int, ra_deg: float, dec_deg: float
) -> Calibrations:
    """Bias, flat and template from the central store; a warm activator reads each key once (LRU).

    Raises ObjectMissing (non-retriable) for a missing calibration or template, RetriableError
    when S3 fails, NonRetriableError for an unreadable file.
    """
    with clock.timing("preload"):
        bucket = ctx.settings.s3.central_bucket
        tile = sky_tile(ra_deg, dec_deg)
        keys = (layout.bias_key(instrument, detector), layout.flat_key(instrument, detector),
                layout.template_key(instrument, tile, detector))  # fmt: skip
        bias, flat, template = (_cached_image(ctx, bucket, k) for k in keys)
        return Calibrations(bias=bias, flat=flat, template=template, template_key=keys[2])


def _cached_image(ctx: ProcessingContext, bucket: str, key: str) -> npt.NDArray[np.float32]:
    """The image at ``key``, from the run's preload cache or read (and cached) from S3."""
    image: npt.NDArray[np.float32] | None = ctx.preload_cache.get(key)
    if image is None:
        data = s3.get_bytes(ctx.s3, bucket, key)
        try:
            image, _header = from_fits_bytes(data)
        except ValueError as exc:
            raise NonRetriableError(f"s3://{bucket}/{key} is not a readable FITS image: {exc}") from exc
        ctx.preload_cache[key] = image
    return image

"""The three outcomes a visit-detector can fail with; everything else is a bug.

Third-party errors are re-raised at the boundary as one of these (``raise ... from exc``),
so the activator decides on the Redis entry from the type alone:

* ``RetriableError``: worth another try (S3 or Kafka unreachable, a timeout). Prefect retries
  the step; if it still fails the entry stays pending for another activator, up to
  ``max_deliveries``, then goes to the dead-letter stream.
* ``NonRetriableError``: this visit-detector cannot succeed as it is (corrupt FITS, missing
  calibration, images never arrived). Final: the entry is acknowledged, the run is Failed.
* ``IgnorableVisit``: nothing to do (already published, instrument not processed). Final:
  acknowledged, the run is Completed with the reason.
"""

from __future__ import annotations


class VisitError(Exception):
    """Base of the visit outcomes."""


class RetriableError(VisitError):
    """Transient: another try may succeed."""


class NonRetriableError(VisitError):
    """Permanent for this visit-detector: do not try again automatically."""


class ImageTimeout(NonRetriableError):
    """The raw image did not land in time."""


class IgnorableVisit(VisitError):
    """Nothing to do for this visit-detector; not a failure."""


def is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, RetriableError)

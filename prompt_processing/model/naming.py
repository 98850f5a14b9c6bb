"""Every Redis key, stream, consumer-group, Kafka header and Prefect flow/deployment name, in one place.

Production compatibility: streams are ``instrument:<name lower-case>`` and groups
``<name lower-case>_consumer_group``, as in Rubin's deployment.
"""

from __future__ import annotations

KEY_PREFIX = "pp"

# Kafka headers on dead-lettered messages (values are UTF-8 bytes).
DLQ_HEADER_REASON = "pp-dead-letter-reason"
DLQ_HEADER_KIND = "pp-dead-letter-kind"
DLQ_HEADER_SOURCE = "pp-source"  # "<topic>/<partition>/<offset>"


def stream_name(instrument: str) -> str:
    """The Redis stream holding one entry per (visit, active detector)."""
    return f"instrument:{instrument.lower()}"


def consumer_group(instrument: str) -> str:
    """The consumer group the activators read the stream through."""
    return f"{instrument.lower()}_consumer_group"


def visit_key(instrument: str, group_id: str) -> str:
    """The visit's NextVisit JSON, set (with a TTL) when it is fanned out.

    Its existence is the fan-out's de-duplication key; its value lets an operator rerun a
    visit-detector from (instrument, group, detector) alone.
    """
    return f"{KEY_PREFIX}:visit:{instrument.lower()}:{group_id}"


def presence_key(instrument: str, group_id: str, snap: int, detector: int) -> str:
    """Set by the arrival router when a raw image landed (JSON: bucket, key, landed_at)."""
    return f"presence:{instrument.lower()}:{group_id}:{snap}:{detector}"


def unpaired_raws_key(instrument: str, day_obs: str, detector: int) -> str:
    """Set of raw FITS keys of a night and detector whose sidecar has not arrived (yet): the router adds a
    key when the image lands and removes it with the sidecar; an activator whose image never came looks here."""
    return f"{KEY_PREFIX}:unpaired:{instrument.lower()}:{day_obs}:{detector}"


def arrivals_key(instrument: str, group_id: str, snap: int, detector: int) -> str:
    """List the router pushes to when the image lands; the waiting activator BLPOPs it."""
    return f"{KEY_PREFIX}:arrivals:{instrument.lower()}:{group_id}:{snap}:{detector}"


def dead_letter_stream(instrument: str) -> str:
    """Entries that failed ``max_deliveries`` times, with the reason."""
    return f"{stream_name(instrument)}:dead-letter"


def results_stream(instrument: str) -> str:
    """One record per final visit-detector outcome (timings, latency), for reports and benchmarks."""
    return f"{KEY_PREFIX}:results:{instrument.lower()}"


PARKING_CONSUMER = "pp-handed-back"
"""Consumer that a stopping activator hands its pending entries to (idle, so reclaimed at once)."""


def health_key(kind: str, name: str) -> str:
    """JSON health and counters of one service process (``kind``: fanout, router), with a TTL."""
    return f"{KEY_PREFIX}:{kind}:health:{name}"


# Prefect names (flows, deployments) that code, prefect.yaml and the docs must agree on.
ACTIVATOR_FLOW = "activator"
PROCESS_VISIT_DETECTOR_FLOW = "process-visit-detector"
RERUN_DEPLOYMENT = f"{PROCESS_VISIT_DETECTOR_FLOW}/rerun"
VISIT_DETECTOR_TASK = "visit-detector"


def activator_deployment(instrument: str) -> str:
    """The deployment whose runs are the instrument's activators (``<flow>/<deployment>``)."""
    return f"{ACTIVATOR_FLOW}/activator-{instrument.lower()}"


# Prefect tags an operator filters on, and artifact keys (lower-case letters, digits and dashes).
ACTIVATOR_BUSY_TAG = "busy"  # an activator run that processed at least one visit-detector
ACTIVATOR_IDLE_TAG = "idle"  # one that exited without work: hide these with a filter on `busy`


def instrument_tag(instrument: str) -> str:
    """Tag of the runs of one instrument (activators, visit-detector task runs, reruns)."""
    return f"instrument:{instrument}"


def visit_tags(instrument: str, group: str, detector: int) -> list[str]:
    """Tags of a rerun (a flow run) of one visit-detector."""
    return [instrument_tag(instrument), f"group:{group}", f"detector:{detector:03d}"]


def rerun_of_tag(run_id: str) -> str:
    """Tag of a rerun: the run (task run or flow run) whose failure it repeats."""
    return f"rerun-of:{run_id}"


def visit_artifact_key(instrument: str, group: str, detector: int) -> str:
    """The keyed artifact of one visit-detector's latest outcome (``visit-lsstcam-<group>-det094``)."""
    return _artifact_key(f"visit-{instrument}-{group}-det{detector:03d}")


def night_artifact_key(instrument: str, day_obs: str) -> str:
    """The keyed table artifact of one instrument's night, ``<instrument>-night-<dayObs>``."""
    return _artifact_key(f"{instrument}-night-{day_obs}")


def _artifact_key(text: str) -> str:
    key = "".join(c if c.isascii() and c.isalnum() else "-" for c in text.lower())
    return "-".join(part for part in key.split("-") if part)


def epoch_key(kind: str) -> str:
    """A service's marker that Redis still holds what it wrote (gone: Redis lost its data; see
    ``KafkaService.check_redis``)."""
    return f"{KEY_PREFIX}:{kind}:epoch"


ROUTER_DEFERRED_KEY = f"{KEY_PREFIX}:router:deferred"
"""Sidecar reads the router will try again (an S3 outage), scored by when (``services.router``)."""

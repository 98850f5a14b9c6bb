"""One activator of the capacity benchmarks, with image work replaced by a calibrated sleep.

    python -m bench.capacity_activator LSSTCam --compute-s 1.5 --io-s 0.19

Runs the real ``activator`` flow (its flow run, the ``visit-detector`` task run and its four step task
runs, the outcome's log line, event and artifact, the work queue, the alerts ledger's record of the
final outcome): everything the orchestration tier sees. Only the steps' bodies are replaced:

- ``preload`` and ``publish`` each sleep half of ``--io-s`` (their Butler, S3 and Kafka I/O; the
  workers benchmark measured ~190 ms for both at 512 x 512 on 2026-12-01: overhead p50 255 ms, of which
  64 ms outside the steps' code);
- ``wait_for_images`` finds the image there (no wait);
- ``process`` sleeps ``--compute-s`` (image compute: 1.5 s was the p50 at 512 x 512 that day);
- the APDB lookup says "new" (the ledger lookup and record of the final outcome stay real).

So a visit-detector's overhead (its wall time less compute and image wait) is the Prefect and Redis
bookkeeping plus the ``--io-s`` sleep, as the workers benchmark defines it.
"""

from __future__ import annotations

import argparse
import time
import zlib
from datetime import UTC, datetime
from typing import Any

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.butler.local import Preloaded
from prompt_processing.model.events import NextVisit


def install_stubs(compute_s: float, io_s: float) -> None:
    """Replace the four steps' bodies in ``tasks.visit`` by sleeps (same task names and run names)."""
    import tasks.visit as visit_module  # noqa: PLC0415
    from tasks.apdb_state import ApdbState  # noqa: PLC0415
    from tasks.common import step  # noqa: PLC0415
    from tasks.process import Processed  # noqa: PLC0415
    from tasks.publish import Published  # noqa: PLC0415
    from tasks.wait_for_images import RawImages  # noqa: PLC0415

    @step("preload")
    def preload(ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int) -> Preloaded:
        with clock.timing("preload"):
            time.sleep(io_s / 2)
        return Preloaded()

    @step("wait_for_images")
    def wait_for_images(ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int) -> RawImages:
        with clock.timing("wait"):
            pass
        visit_id = zlib.crc32(visit.groupId.encode())
        return RawImages([], [], visit_id, [datetime.now(UTC).isoformat()], 0.0)

    @step("process")
    def process(ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int, raws: RawImages,
                state: Any, names: list[str], missing: list[str]) -> Processed:  # fmt: skip
        with clock.timing("process"):
            time.sleep(compute_s)
        return Processed("calibrated-sleep", "", {})

    @step("publish")
    def publish(ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int, raws: RawImages,
                processed: Processed, state: Any) -> Published:  # fmt: skip
        with clock.timing("publish"):
            time.sleep(io_s / 2)
        return Published(0, time.time(), [], "")

    vars(visit_module).update(preload=preload, wait_for_images=wait_for_images, process=process, publish=publish,
                              apdb_state=lambda *args: ApdbState.NEW)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("instrument")
    parser.add_argument("--compute-s", type=float, default=1.5)
    parser.add_argument("--io-s", type=float, default=0.19)
    parser.add_argument("--idle-timeout-s", type=float, default=3600.0)
    args = parser.parse_args()
    install_stubs(args.compute_s, args.io_s)
    from flows.activator import activator  # noqa: PLC0415

    activator(args.instrument, max_visits=1_000_000, idle_timeout_s=args.idle_timeout_s, return_state=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

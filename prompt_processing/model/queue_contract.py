"""The work-queue contract: what the autoscaler and the activators of one instrument agree on.

The autoscaler counts a pending entry idle longer than ``claim_idle_s`` as a dead activator's and
creates a run for it; that run must reclaim exactly those entries, from the same stream and
group. So the autoscaler hands the contract it measured with to every activator run it creates
(flow parameter ``queue``), instead of each process reading its own copy of the settings.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from prompt_processing.model import naming
from prompt_processing.settings import QueueSettings


class QueueContract(BaseModel):
    """One instrument's stream, its consumer group, and when an entry counts as abandoned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stream: str = Field(min_length=1, description="Redis stream of the instrument's work entries.")
    consumer_group: str = Field(min_length=1, description="Consumer group every activator reads it through.")
    claim_idle_s: float = Field(gt=0, description="A pending entry idle this long is reclaimed (a dead activator's).")
    max_deliveries: int = Field(ge=1, description="Deliveries before an entry goes to the dead-letter stream.")
    retry_delay_s: float = Field(5.0, gt=0, description="First delay before a failed attempt is retried (doubles).")

    @classmethod
    def for_instrument(
        cls, instrument: str, queue: QueueSettings, *, stream: str | None = None, consumer_group: str | None = None
    ) -> QueueContract:
        """The contract from ``queue`` settings; stream and group default to the instrument's names."""
        return cls(
            stream=stream or naming.stream_name(instrument),
            consumer_group=consumer_group or naming.consumer_group(instrument),
            claim_idle_s=queue.claim_idle_s,
            max_deliveries=queue.max_deliveries,
            retry_delay_s=queue.retry_delay_s,
        )

"""The services' Prometheus endpoints on the real stack: what a scrape reads."""

from __future__ import annotations

import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from prompt_processing.services.fanout import FanOutService
from prompt_processing.services.router import RouterService
from prompt_processing.settings import Settings
from tests.helpers import Running, produce, visit_body, wait_for
from tests.test_router import RAW, SIDECAR, _notify, _upload


def scrape(port: int | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics`` as {(sample name, labels): value}."""
    assert port is not None, "the service serves no metrics"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def test_fanout_counts_messages_by_outcome_and_times_them(settings: Settings, redis_client: redis.Redis) -> None:
    with Running(FanOutService(settings)) as service:
        produce(settings, visit_body("LSSTCam", "m-1"), visit_body("LSSTCam", "m-1"), b"not json")
        stats = service.stats
        wait_for(lambda: (stats.fanned_out, stats.duplicates, sum(stats.dead_lettered.values())) == (1, 1, 1),
                 what="three messages handled")  # fmt: skip
        samples = scrape(service.metrics_port)
    assert samples[("pp_fanout_messages_total", (("outcome", "fanned_out"),))] == 1
    assert samples[("pp_fanout_messages_total", (("outcome", "duplicate"),))] == 1
    assert samples[("pp_fanout_messages_total", (("outcome", "dead_lettered"),))] == 1
    assert samples[("pp_fanout_dead_lettered_total", (("kind", "malformed"),))] == 1
    assert samples[("pp_fanout_entries_written_total", ())] == 172  # production's active LSSTCam detectors
    assert samples[("pp_fanout_latency_seconds_count", ())] == 1


def test_router_counts_notifications_presences_and_rejects(settings: Settings, redis_client: redis.Redis) -> None:
    _upload(settings, RAW, b"fits bytes")
    _upload(settings, SIDECAR, b'{"GROUPID": "m-2", "CURINDEX": 1}')
    with Running(RouterService(settings)) as router:
        _notify(settings, {"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-11-28T03:00:00Z",
                                        "s3": {"bucket": {"name": settings.s3.raw_bucket},
                                               "object": {"key": SIDECAR}}}]}, b"garbage")  # fmt: skip
        wait_for(lambda: (router.counts["presences"], router.counts["dead_lettered_malformed"]) == (1, 1),
                 what="two notifications handled")  # fmt: skip
        samples = scrape(router.metrics_port)
    assert samples[("pp_router_notifications_total", ())] == 2
    assert samples[("pp_router_presences_total", ())] == 1
    assert samples[("pp_router_dead_lettered_total", (("kind", "malformed"),))] == 1


def test_a_taken_metrics_port_is_a_clear_start_up_error(settings: Settings, redis_client: redis.Redis) -> None:
    with Running(FanOutService(settings)) as first:
        taken = first.metrics_port
        metrics = settings.metrics.model_copy(update={"fanout_port": taken})
        second = FanOutService(settings.model_copy(update={"metrics": metrics}))
        with pytest.raises(RuntimeError, match=rf"metrics endpoint 127.0.0.1:{taken} unavailable"):
            second.startup()
        second.shutdown()

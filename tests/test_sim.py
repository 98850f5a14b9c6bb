"""The summit simulator: pure planning, and `pp sim next-visits` against the real broker."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from pp_devkit.sim import group_id_for, next_visit_message, plan_visits
from prompt_processing.model.events import TAI_MINUS_UTC_S, NextVisit
from prompt_processing.model.instruments import HSC, LSSTCAM
from prompt_processing.settings import Settings
from tests.helpers import consume_all


def test_plans_are_seeded_and_survey_like() -> None:
    plans = plan_visits(LSSTCAM, 200, seed=3)
    assert plans == plan_visits(LSSTCAM, 200, seed=3)
    assert plans != plan_visits(LSSTCAM, 200, seed=4)
    assert {p.nimages for p in plans} == {1, 2}
    assert {p.filters for p in plans} <= set(LSSTCAM.filters)
    assert all(-89 <= p.dec_deg <= 30 and 0 <= p.ra_deg < 360 for p in plans)
    steps = [(b.ra_deg - a.ra_deg) % 360 for a, b in itertools.pairwise(plans)]
    assert all(2.5 <= s <= 3.5 for s in steps)  # neighbouring fields, like a survey


def test_message_is_a_valid_event_announced_ahead() -> None:
    now = 1_800_000_000.0
    body = next_visit_message(HSC, plan_visits(HSC, 1)[0], now_utc_s=now, lead_s=25, seq_num=9)
    visit = NextVisit.model_validate_json(json.dumps(body))
    assert visit.startTime - (now + TAI_MINUS_UTC_S) == pytest.approx(25)
    assert visit.groupId == group_id_for(visit.startTime) == "2027-01-15T08:00:25.000"
    assert visit.sent_at_utc() == now
    with pytest.raises(ValueError, match="lead_s must be >= 20"):
        next_visit_message(HSC, plan_visits(HSC, 1)[0], now_utc_s=now, lead_s=19.9, seq_num=1)


def test_cli_sends_events_to_the_topic(settings: Settings) -> None:
    topic = settings.kafka.next_visit_topic
    env = os.environ | {"PP_KAFKA__PORT": str(settings.kafka.port), "PP_KAFKA__NEXT_VISIT_TOPIC": topic}
    before = time.time()
    command = [sys.executable, "-m", "prompt_processing.cli", "sim", "next-visits", "--instrument", "LSSTCam",
               "--visits", "4", "--cadence-s", "0.05", "--lead-s", "30"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "sent 4 LSSTCam next-visit events" in done.stdout
    visits = [NextVisit.model_validate_json(m.value()) for m in consume_all(settings, topic, 4)]
    assert len({v.groupId for v in visits}) == 4
    for visit in visits:
        assert visit.instrument == "LSSTCam"
        assert visit.startTime - TAI_MINUS_UTC_S >= before + 30


def test_cli_refuses_an_unknown_instrument() -> None:
    command = [sys.executable, "-m", "prompt_processing.cli", "sim", "next-visits", "--instrument", "DECam"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "unknown instrument 'DECam'" in done.stderr

"""The reporter service and `pp report` on the real stack, checked against independent reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from prompt_processing.adapters.results import read_results
from prompt_processing.cli import main
from prompt_processing.model import naming
from prompt_processing.model.events import TAI_MINUS_UTC_S, day_obs
from prompt_processing.services.reporter import ReporterService
from prompt_processing.settings import ReporterSettings
from tests.helpers import consume_all, decode_alerts, serving, wait_for
from tests.test_metrics import scrape
from tests.test_pipeline import Pipeline, _activator_in_thread, pipeline  # noqa: F401 (a fixture)


def latest_artifact(key: str) -> Any:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created) if found else None


@pytest.mark.timeout(180)
def test_the_night_artifact_and_pp_report_count_what_is_there(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fine = pipeline.announce("rp-fine")
    pipeline.land(fine)
    pipeline.announce("rp-lost", duration_s=0.5)  # its image never comes
    night = day_obs(fine["startTime"] - TAI_MINUS_UTC_S)
    settings = pipeline.settings.model_copy(update={"reporter": ReporterSettings(artifact_every_s=0.2, block_s=0.2)})
    with serving(ReporterService(settings, ["LATISS"])) as reporter:
        thread, counts = _activator_in_thread()
        thread.join(60)
        assert (counts["succeeded"], counts["failed"]) == (1, 1)
        key = naming.night_artifact_key("LATISS", night)
        wait_for(lambda: (a := latest_artifact(key)) is not None and len(json.loads(a.data)) == 2,
                 what=f"the {key} table with both visit-detectors")  # fmt: skip
        rows = {row["visit"]: row for row in json.loads(latest_artifact(key).data)}
        assert reporter.written >= 1
        scraped = scrape(reporter.metrics_port)
    for status in ("succeeded", "failed"):
        assert scraped[("pp_visits_total", (("instrument", "LATISS"), ("outcome", status)))] == 1
    assert scraped[("pp_landed_to_alerts_seconds_count", (("instrument", "LATISS"),))] == 1
    memory = [v for (name, _labels), v in scraped.items() if name == "pp_activator_max_rss_bytes"]
    assert len(memory) == 1 and memory[0] > 50e6  # one activator, a Python process with numpy and Prefect
    assert (rows["rp-fine"]["status"], rows["rp-lost"]["status"]) == ("succeeded", "failed")
    assert "no raw image" in rows["rp-lost"]["reason"] and rows["rp-fine"]["landed -> alerts (s)"] > 0
    assert "1 succeeded, 1 failed, 0 ignored" in latest_artifact(f"{key}-summary").data

    # pp report: its figures against an independent read of the results and of the alerts topic.
    recorded = {r["group"]: r for r in read_results(pipeline.redis, "LATISS")}
    n_alerts = int(recorded["rp-fine"]["n_alerts"])
    on_topic = decode_alerts(pipeline.settings, consume_all(pipeline.settings, pipeline.settings.kafka.alerts_topic,
                                                            n_alerts + 1, timeout_s=5))  # fmt: skip
    assert len(on_topic) == n_alerts >= 3  # one more was asked for: none may come
    monkeypatch.setenv("PP_PREFECT__PORT", str(pipeline.settings.prefect.port))
    monkeypatch.setenv("PP_KAFKA__ALERTS_TOPIC", pipeline.settings.kafka.alerts_topic)
    capsys.readouterr()
    assert main(["report", "--night", night, "--instrument", "LATISS", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().err
    assert "succeeded / failed / ignored" in printed and "1 / 1 / 0" in printed
    assert f"{n_alerts} / {n_alerts}" in printed  # alerts recorded / on the alerts topic
    assert "ImageTimeout in wait_for_images" in printed
    png = tmp_path / f"LATISS-night-{night}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

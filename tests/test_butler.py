"""The data layer on real repositories: central repo init, preload, raw ingest, export, the writer's ingest.

SQLite + local files (the embedded default) everywhere; PostgreSQL + S3 (production's kind) for the
end-to-end path. No Kafka here: ``test_butler_writer.py`` runs the writer service.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from lsst.daf.butler import Butler

from pp_devkit.postgres import fresh_database
from prompt_processing.butler import repo
from prompt_processing.butler.local import visit_timespan
from prompt_processing.butler.output_event import BadOutputEvent, OutputEvent
from prompt_processing.butler.records import HeaderMismatch
from prompt_processing.butler.writer import CentralWriter
from prompt_processing.model.instruments import LATISS, LSSTCAM
from prompt_processing.settings import Settings, StackSettings
from tests.butler_helpers import (
    Visit,
    count_outputs,
    export_visit_detector,
    local_repo,
    seed,
    with_central,
)


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return Settings(stack=StackSettings(state_dir=tmp_path / "state"))


@pytest.fixture
def central(local_settings: Settings) -> Butler:
    return repo.init_central(local_settings.butler, local_settings.s3)


def test_init_registers_instruments_detectors_and_collections_and_is_idempotent(
    local_settings: Settings, central: Butler
) -> None:
    assert local_settings.butler.central_repo == str((local_settings.stack.state_dir / "butler/central").resolve())
    detectors = {r.id: r.full_name for r in central.query_dimension_records("detector", instrument="LSSTCam")}
    assert len(detectors) == 189 and detectors[94] == "R22_S11"
    assert {r.name for r in central.query_dimension_records("instrument")} == {"LSSTCam", "LATISS", "HSC"}
    bands = {r.name: r.band for r in central.query_dimension_records("physical_filter", instrument="LSSTCam")}
    assert bands["r_57"] == "r" and len(bands) == 6
    assert set(central.collections.query("*")) >= {"LSSTCam/calib", "LATISS/raw/all", "templates", "refcats"}
    assert central.get_dataset_type(repo.BIAS).isCalibration()
    again = repo.init_central(local_settings.butler, local_settings.s3)  # changes nothing
    assert len(list(again.query_dimension_records("detector"))) == 189 + 1 + 104


def test_preload_brings_calibs_template_and_refcats_and_keeps_calibs_warm(
    tmp_path: Path, local_settings: Settings, central: Butler
) -> None:
    visit = Visit.make(LSSTCAM)
    seed(central, visit, (94, 95))
    local = local_repo(tmp_path, local_settings.butler, repo.open_central(local_settings.butler, local_settings.s3),
                       "LSSTCam")  # fmt: skip
    cold = local.preload(visit.next_visit, 94)
    assert cold.missing == [] and cold.bias and cold.flat and cold.templates and cold.refcats
    assert cold.transferred == 2 + len(cold.templates) + len(cold.refcats)
    # Re-certified locally with the central validity range: found by the visit's time, as a pipeline would.
    ts = local.butler.find_dataset(repo.BIAS, instrument="LSSTCam", detector=94,
                                   collections="LSSTCam/calib", timespan=visit_timespan(visit.next_visit))  # fmt: skip
    assert ts is not None and ts.id == cold.bias.id
    local.end_visit()  # templates and refcats are not cached (template_cache_entries = 0): pruned
    assert local.butler.stored(cold.bias) and not any(local.butler.stored(ref) for ref in cold.templates)
    warm = local.preload(visit.next_visit, 94)
    assert warm.transferred == len(warm.templates) + len(warm.refcats)  # templates and shards again, not the calibs
    template = local.read(warm.templates[0])
    assert template.sky_projection is not None  # each template is on its own grid


def test_preload_of_a_visit_without_template_reports_it_and_still_preloads_calibs(
    tmp_path: Path, local_settings: Settings, central: Butler
) -> None:
    visit = Visit.make(LATISS)
    seed(central, visit, (0,), holes=(0,))
    local = local_repo(tmp_path, local_settings.butler, central, "LATISS")
    found = local.preload(visit.next_visit, 0)
    assert found.templates == [] and found.bias is not None and found.flat is not None
    (missing,) = found.missing
    assert missing.startswith("template: none in templates overlaps detector 0 (its centre: ra ")
    assert local.butler.stored(found.bias) and local.butler.stored(found.flat)


def test_preload_reports_a_filter_without_flat(tmp_path: Path, local_settings: Settings, central: Butler) -> None:
    visit = Visit.make(LATISS)
    seed(central, visit, (0,))
    other = next(f for f in LATISS.filters if f != visit.next_visit.filters)
    changed = visit.next_visit.model_copy(update={"filters": other})
    found = local_repo(tmp_path, local_settings.butler, central, "LATISS").preload(changed, 0)
    assert found.missing == ["flat: none certified in LATISS/calib for detector 0 at the visit's time"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"GROUPID": "another"}, "GROUPID='another' but the visit expects"),
     ({"DETECTOR": 1}, "DETECTOR=1 but the visit expects 0"),
     ({"FILTER": "HSC-G"}, "FILTER='HSC-G' but the visit expects"),
     ({"DATE-BEG": "yesterday"}, "unreadable card")],
)  # fmt: skip
def test_raw_whose_header_disagrees_with_its_visit_is_refused(
    tmp_path: Path, local_settings: Settings, central: Butler, changes: dict[str, object], message: str
) -> None:
    visit = Visit.make(LATISS, group="hdr")
    image, header = visit.raw(0, **changes)
    local = local_repo(tmp_path, local_settings.butler, central, "LATISS")
    with pytest.raises(HeaderMismatch, match=message):
        local.ingest_raw(visit.next_visit, 0, 0, image, header)
    assert not local.butler.query_dimension_records("exposure", explain=False)  # nothing half-ingested


def test_a_raw_missing_header_cards_is_refused_naming_them(
    tmp_path: Path, local_settings: Settings, central: Butler
) -> None:
    visit = Visit.make(LATISS)
    image, header = visit.raw(0)
    del header["SEQNUM"], header["DAYOBS"]
    with pytest.raises(HeaderMismatch, match="raw header lacks DAYOBS, SEQNUM"):
        local_repo(tmp_path, local_settings.butler, central, "LATISS").ingest_raw(visit.next_visit, 0, 0, image, header)


def test_one_visit_end_to_end_lands_in_central_and_a_replay_changes_nothing(
    tmp_path: Path, local_settings: Settings, central: Butler
) -> None:
    visit = Visit.make(LSSTCAM)
    seed(central, visit, (94,))
    local = local_repo(tmp_path, local_settings.butler, repo.open_central(local_settings.butler, local_settings.s3),
                       "LSSTCam")  # fmt: skip
    event = export_visit_detector(local, visit, 94)
    wire = event.to_json()
    writer = CentralWriter(central)
    report = writer.ingest([OutputEvent.from_json(wire, central.dimensions)])
    assert (report.events, report.datasets, report.rejected) == (1, 4, [])
    night = visit.next_visit.day_obs()
    assert count_outputs(central, "LSSTCam", night) == 4
    visit_id = event.datasets[0][1].dataId["visit"]
    (record,) = central.query_dimension_records("visit", instrument="LSSTCam", visit=visit_id)
    assert record.physical_filter == visit.next_visit.filters
    image = central.get(repo.VISIT_IMAGE, instrument="LSSTCam", visit=visit_id, detector=94,
                        collections=event.about["run"])  # fmt: skip
    assert image.array.shape == (128, 128)
    again = writer.ingest([OutputEvent.from_json(wire, central.dimensions)])
    assert again.rejected == [] and count_outputs(central, "LSSTCam", night) == 4


def test_a_bad_event_in_a_batch_is_rejected_alone(tmp_path: Path, local_settings: Settings, central: Butler) -> None:
    visit = Visit.make(LATISS)
    seed(central, visit, (0,))
    local = local_repo(tmp_path, local_settings.butler, central, "LATISS")
    good = export_visit_detector(local, visit, 0)
    missing_file = export_visit_detector(local, visit, 0, attempt="a2")
    Path(str(local.central_root.join(missing_file.datasets[0][0]).ospath)).unlink()
    report = CentralWriter(central).ingest([missing_file, good])
    assert report.one_at_a_time and report.events == 1
    ((index, why),) = report.rejected
    assert index == 0 and why.kind == "missing-file"
    assert count_outputs(central, "LATISS", visit.next_visit.day_obs()) == 4


def test_an_event_of_an_unknown_dataset_type_is_rejected_before_the_batch(
    tmp_path: Path, local_settings: Settings, central: Butler
) -> None:
    visit = Visit.make(LATISS)
    seed(central, visit, (0,))
    local = local_repo(tmp_path, local_settings.butler, central, "LATISS")
    event = export_visit_detector(local, visit, 0)
    body = json.loads(event.to_json())
    body["datasets"][0]["ref"]["datasetType"]["name"] = "not_a_type"
    strange = OutputEvent.from_json(json.dumps(body).encode(), central.dimensions)
    report = CentralWriter(central).ingest([strange])
    ((_, why),) = report.rejected
    assert why.kind == "unknown-dataset-type" and "'not_a_type'" in str(why)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"{", "not JSON"), (b'{"type": "pp-output", "version": 2}', "version 1"),
     (b'{"type": "pp-output", "version": 1, "dimension_records": [], "datasets": []}', "no datasets"),
     (b'{"type": "pp-output", "version": 1, "dimension_records": [{"element": "nope", "record": {}}], '
      b'"datasets": []}', "unknown dimension element 'nope'")],
)  # fmt: skip
def test_malformed_events_are_refused_with_the_reason(central: Butler, raw: bytes, reason: str) -> None:
    with pytest.raises(BadOutputEvent, match=reason) as caught:
        OutputEvent.from_json(raw, central.dimensions)
    assert caught.value.kind == "malformed"


def test_an_event_cannot_point_outside_the_datastore(tmp_path: Path, local_settings: Settings, central: Butler) -> None:
    visit = Visit.make(LATISS)
    seed(central, visit, (0,))
    body = json.loads(export_visit_detector(local_repo(tmp_path, local_settings.butler, central, "LATISS"),
                                            visit, 0).to_json())  # fmt: skip
    for path in ("/etc/passwd", "../../elsewhere.fits", "s3://other/x.fits"):
        body["datasets"][0]["path"] = path
        with pytest.raises(BadOutputEvent, match="not a relative path inside the datastore"):
            OutputEvent.from_json(json.dumps(body).encode(), central.dimensions)


@pytest.mark.stack
def test_postgres_registry_and_s3_datastore_end_to_end(tmp_path: Path, settings: Settings) -> None:
    """Production's kind of central repository: PostgreSQL registry (btree_gist made by init), S3 files."""
    from prompt_processing.adapters import s3

    client = s3.make_client(settings.s3)
    s3.ensure_buckets(client, [settings.s3.truth_bucket])
    client.close()
    with fresh_database() as db_url:
        pg = with_central(settings, f"s3://{settings.s3.truth_bucket}/central")
        central = repo.init_central(pg.butler, pg.s3, registry_db=db_url)
        with psycopg.connect(db_url.replace("+psycopg", "")) as db:  # the registry is there, with btree_gist
            assert db.execute("SELECT count(*) FROM pg_extension WHERE extname = 'btree_gist'").fetchone() == (1,)
            assert db.execute("SELECT count(*) FROM detector").fetchone() == (189 + 1 + 104,)
        visit = Visit.make(LSSTCAM)
        seed(central, visit, (94, 95))
        reader = repo.open_central(pg.butler, pg.s3)
        local = local_repo(tmp_path, pg.butler, reader, "LSSTCam")
        events = [export_visit_detector(local, visit, d) for d in (94, 95)]
        assert str(local.central_root).startswith("s3://")
        writer = CentralWriter(central)
        report = writer.ingest([OutputEvent.from_json(e.to_json(), central.dimensions) for e in events])
        assert (report.events, report.datasets, report.one_at_a_time) == (2, 8, False)
        night = visit.next_visit.day_obs()
        assert count_outputs(reader, "LSSTCam", night) == 8
        replay = writer.ingest([OutputEvent.from_json(events[0].to_json(), central.dimensions)])
        assert replay.rejected == [] and count_outputs(reader, "LSSTCam", night) == 8
        ref = events[0].datasets[2][1]
        assert ref.datasetType.name == repo.DIA_SOURCES
        assert reader.get(ref).column_names == local.read(ref).column_names  # read back from S3
        for butler in (local, reader, central):  # before the database is dropped
            butler.close()



def test_activator_images_are_written_plain_unless_compression_is_asked_for(
    tmp_path: Path, local_settings: Settings, central: Butler
) -> None:
    from astropy.io import fits

    visit = Visit.make(LATISS)
    image, header = visit.raw(0)
    kinds = {}
    for compress in (False, True):
        settings = local_settings.butler.model_copy(update={"compress_images": compress})
        local = local_repo(tmp_path, settings, central, "LATISS")
        ref, _ = local.ingest_raw(visit.next_visit, 0, 0, image, header)
        with fits.open(local.butler.getURI(ref).ospath) as hdus:
            kinds[compress] = {type(hdu).__name__ for hdu in hdus}
        assert (local.read(ref).array == image).all()  # lossless either way
        local.close()
    local_repo(tmp_path, local_settings.butler, central, "LATISS").close()  # back to the default: plain
    assert "CompImageHDU" not in kinds[False] and "CompImageHDU" in kinds[True]


def test_a_visit_not_pointed_on_the_sky_reports_why_it_has_no_template(
    tmp_path: Path, local_settings: Settings, central: Butler
) -> None:
    from prompt_processing.model.events import CoordinateSystem

    visit = Visit.make(LATISS)
    seed(central, visit, (0,))
    horizontal = visit.next_visit.model_copy(update={"coordinateSystem": CoordinateSystem.OBSERVED})
    found = local_repo(tmp_path, local_settings.butler, central, "LATISS").preload(horizontal, 0)
    assert found.bias is not None and found.templates == []
    assert "template: the visit's coordinateSystem is OBSERVED, not ICRS" in found.missing[0]

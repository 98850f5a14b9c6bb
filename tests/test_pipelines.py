"""The pipelines on lsst-pipe-base's executor, on a real local repository fed by a real central one:
Alert Production end to end, fallbacks while a graph cannot be built, a failed quantum named, selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from lsst.daf.butler import Butler
from scipy.ndimage import label

from pp_devkit.skyfield import raw_scene
from prompt_processing.alerts.packet import load_schema
from prompt_processing.apdb.db import init_apdb
from prompt_processing.butler import repo
from prompt_processing.butler.local import LocalRepo
from prompt_processing.imaging.calibration import CalibrationError
from prompt_processing.imaging.psf import FWHM_PER_SIGMA
from prompt_processing.model import sky
from prompt_processing.model.instruments import LATISS, LSSTCAM, Instrument
from prompt_processing.pipelines.calibrate import wcs_from_cards
from prompt_processing.pipelines.runner import NoPipeline, PipelineFailed, PipelineRun, run_pipelines
from prompt_processing.pipelines.selection import Unselected, select_pipelines
from prompt_processing.settings import PipelineRule, PipelinesSettings, Settings, StackSettings
from tests.butler_helpers import Visit, local_repo, seed

FALLBACKS = ["ApPipe", "SingleFrame", "Isr"]
SHAPE_PX = (384, 384)  # enough stars for the PSF, the astrometric fit and the zero point


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(stack=StackSettings(state_dir=tmp_path / "state"))
    init_apdb(settings.apdb)
    return settings


@pytest.fixture
def central(settings: Settings) -> Butler:
    return repo.init_central(settings.butler, settings.s3)


def _prepared(tmp_path: Path, settings: Settings, central: Butler, *, holes: tuple[int, ...] = (),
              other_filter: bool = False, camera: Instrument = LATISS, detector: int = 0) -> tuple[Visit, LocalRepo]:
    """A seeded visit (``holes``: without its template; ``other_filter``: in a filter with no flat) and a
    local repository it was preloaded into."""
    visit = Visit.make(camera)
    seed(central, visit, (detector,), holes=holes, shape_px=SHAPE_PX)
    if other_filter:
        other = next(f for f in camera.filters if f != visit.next_visit.filters)
        visit.next_visit = visit.next_visit.model_copy(update={"filters": other})
    local = local_repo(tmp_path, settings.butler, central, camera.name)
    local.preload(visit.next_visit, detector)
    return visit, local


def _run(settings: Settings, local: LocalRepo, visit: Visit, raw: np.ndarray | None = None,
         detector: int = 0, saturation_adu: float = 65535.0) -> PipelineRun:  # fmt: skip
    image, header = visit.raw(detector, SHAPE_PX)
    raw_ref, _records = local.ingest_raw(visit.next_visit, detector, 0, image if raw is None else raw, header)
    v = visit.next_visit
    where = f"instrument='{v.instrument}' AND visit={int(raw_ref.dataId['exposure'])} AND detector={detector}"
    return run_pipelines(local.butler, v.instrument, FALLBACKS, inputs=local.input_collections, where=where,
                         run=repo.output_run(v.instrument, v.day_obs(), v.groupId, "t1"),
                         config={"associate": {"apdb_url": settings.apdb.db_url or ""},
                                 "isr": {"saturation_adu": saturation_adu}})  # fmt: skip


def test_alert_production_runs_every_task_and_packages_alerts(
    tmp_path: Path, settings: Settings, central: Butler
) -> None:
    visit, local = _prepared(tmp_path, settings, central)
    done = _run(settings, local, visit)
    assert (done.pipeline, done.tried) == ("ApPipe", [])
    assert set(done.task_s) == {"isr", "calibrate", "template", "subtract", "detect", "associate", "package"}
    assert done.graph_s > 0 and done.execute_s >= sum(done.task_s.values()) and done.middleware_s > 0
    alerts = local.read(done.outputs[repo.ALERTS])
    sources = local.read(done.outputs[repo.DIA_SOURCES])
    assert 2 <= alerts.num_rows == sources.num_rows <= 5  # 3 injected transients, at most 2 false
    schema = load_schema()
    decoded = [schema.decode(payload) for payload in alerts["payload"].to_pylist()]
    assert [str(a["diaSourceId"]) for a in decoded] == alerts["key"].to_pylist()
    assert sorted(a["diaSourceId"] for a in decoded) == sorted(sources["diaSourceId"].to_pylist())
    visit_image = local.read(done.outputs[repo.VISIT_IMAGE])
    assert visit_image.sky_projection is not None  # the WCS travels with the image
    summary = local.read(done.outputs[repo.VISIT_SUMMARY])
    scale_arcsec = sky.pixel_scale_arcsec(LATISS, 0, SHAPE_PX[1])
    scene = raw_scene(LATISS, 0, visit.next_visit.model_dump(mode="json"), SHAPE_PX)
    assert summary["astrometry_matches"] >= 10 and summary["astrometry_rms_arcsec"] < 0.4 * scale_arcsec
    assert np.allclose(summary["pointing_offset_arcsec"], 0.0, atol=3.0)  # a 1 arcsec rms pointing error was found
    fitted = wcs_from_cards(summary["wcs"])
    centre = (SHAPE_PX[1] - 1) / 2, (SHAPE_PX[0] - 1) / 2
    true_centre = SkyCoord(*scene.true_wcs.pixel_to_world_values(*centre), unit="deg")
    found_centre = SkyCoord(*fitted.pixel_to_world_values(*centre), unit="deg")
    # The fit found the true WCS: 0.01-0.07 px off over 12 visits (some 40 stars at this size).
    assert true_centre.separation(found_centre).arcsec < 0.15 * scale_arcsec
    assert abs(summary["psf_fwhm_px"] - scene.seeing_fwhm_px) < 0.3
    xx, yy, xy = summary["psf_model_px2"]  # the simulator's PSF is round: (s^2, s^2, 0)
    sigma2 = (scene.seeing_fwhm_px / FWHM_PER_SIGMA) ** 2
    assert xx == pytest.approx(sigma2, rel=0.1) and yy == pytest.approx(sigma2, rel=0.1) and abs(xy) < 0.05 * sigma2
    assert 27.7 < summary["zero_point_mag"] < 28.1  # nominal 28, less a transparency of 0.85-1


def test_an_outer_detector_far_from_the_boresight_is_calibrated_too(
    tmp_path: Path, settings: Settings, central: Butler
) -> None:
    """LSSTCam R22_S20, ~0.3 deg from the boresight: the tangent point of the fit is not the pointing's."""
    visit, local = _prepared(tmp_path, settings, central, camera=LSSTCAM, detector=96)
    done = _run(settings, local, visit, detector=96)
    summary = local.read(done.outputs[repo.VISIT_SUMMARY])
    assert done.pipeline == "ApPipe" and summary["astrometry_matches"] >= 10
    assert summary["astrometry_rms_arcsec"] < 0.4 * sky.pixel_scale_arcsec(LSSTCAM, 96, SHAPE_PX[1])


def test_no_template_falls_through_to_single_frame_and_says_why(
    tmp_path: Path, settings: Settings, central: Butler
) -> None:
    visit, local = _prepared(tmp_path, settings, central, holes=(0,))
    done = _run(settings, local, visit)
    assert done.pipeline == "SingleFrame"
    ((name, why),) = done.tried
    assert name == "ApPipe" and why.startswith("cannot build: Not enough datasets (0) found")
    assert "pp_sim_template" in why
    assert repo.ALERTS not in done.outputs and repo.VISIT_IMAGE in done.outputs


def test_no_flat_means_no_pipeline_can_be_built_and_each_says_why(
    tmp_path: Path, settings: Settings, central: Butler
) -> None:
    visit, local = _prepared(tmp_path, settings, central, other_filter=True)
    with pytest.raises(NoPipeline) as caught:
        _run(settings, local, visit)
    assert [name for name, _ in caught.value.tried] == FALLBACKS
    assert all("cannot build" in why and "flat" in why for _, why in caught.value.tried), caught.value.tried


def test_a_failed_quantum_is_final_and_names_task_data_id_and_error(
    tmp_path: Path, settings: Settings, central: Butler
) -> None:
    visit, local = _prepared(tmp_path, settings, central)
    with pytest.raises(PipelineFailed) as caught:
        _run(settings, local, visit, raw=np.zeros((64, 64), dtype=np.float32))  # not the calibrations' shape
    failed = caught.value
    assert (failed.pipeline, failed.task) == ("ApPipe", "isr") and "detector: 0" in failed.data_id
    assert isinstance(failed.error, ValueError) and "differ in shape" in str(failed.error)
    assert str(failed).startswith("ApPipe: task isr failed on {instrument: 'LATISS'")


def test_saturated_stars_are_masked_and_no_alert_is_sent_for_them(
    tmp_path: Path, settings: Settings, central: Butler
) -> None:
    """A camera whose full well is reached by the brightest stars' cores."""
    visit, local = _prepared(tmp_path, settings, central)
    image, _ = visit.raw(0, SHAPE_PX)
    saturation_adu = float(np.percentile(image, 99.97))
    raw = np.minimum(image, np.float32(saturation_adu))
    clipped = (image >= saturation_adu)[:, : SHAPE_PX[1]]  # the imaging area (the overscan is never this high)
    assert label(clipped)[1] >= 3  # stars with saturated cores
    done = _run(settings, local, visit, raw=raw, saturation_adu=saturation_adu)
    assert done.pipeline == "ApPipe"
    visit_image = local.read(done.outputs[repo.VISIT_IMAGE]).array
    assert np.isnan(visit_image[clipped]).all() and np.isfinite(visit_image[~clipped]).all()
    sources = local.read(done.outputs[repo.DIA_SOURCES])
    assert 2 <= sources.num_rows <= 5  # 3 injected transients, at most 2 false
    rows, cols = np.nonzero(clipped)
    for x, y in zip(sources["x"].to_pylist(), sources["y"].to_pylist(), strict=True):
        assert np.hypot(cols - x, rows - y).min() > 5.0  # the difference is blanked around saturated stars
    summary = local.read(done.outputs[repo.VISIT_SUMMARY])
    assert summary["astrometry_matches"] >= 10
    scene = raw_scene(LATISS, 0, visit.next_visit.model_dump(mode="json"), SHAPE_PX)
    assert abs(summary["psf_fwhm_px"] - scene.seeing_fwhm_px) < 0.3  # measured on unsaturated stars only


def test_a_field_saturated_everywhere_fails_in_calibrate_saying_why(
    tmp_path: Path, settings: Settings, central: Butler
) -> None:
    """Every star's core clipped at the ADC's full scale: a final failure naming the step and the reason."""
    visit, local = _prepared(tmp_path, settings, central)
    image, _ = visit.raw(0, SHAPE_PX)
    level = np.float32(1000.0)  # about the amplifiers' levels: their overscan grows alike, and corrects it
    saturated = np.minimum(level + (image - level) * 50, np.float32(65535.0))
    with pytest.raises(PipelineFailed) as caught:
        _run(settings, local, visit, raw=saturated)
    assert (caught.value.pipeline, caught.value.task) == ("ApPipe", "calibrate")
    assert isinstance(caught.value.error, CalibrationError) and "too few to measure the PSF" in str(caught.value)


def test_selection_follows_the_first_matching_rule() -> None:
    rules = PipelinesSettings(rules=[
        PipelineRule(survey="BLOCK-*", pipelines=FALLBACKS, dec_deg=(-90.0, 0.0)),
        PipelineRule(survey="BLOCK-*", pipelines=["SingleFrame"]),
        PipelineRule(survey="", pipelines=[]),
    ])  # fmt: skip
    assert select_pipelines(rules, "BLOCK-365", 10.0, -30.0) == FALLBACKS
    assert select_pipelines(rules, "BLOCK-365", 10.0, 30.0) == ["SingleFrame"]  # the north: second rule
    with pytest.raises(Unselected, match="gives no pipeline") as empty:
        select_pipelines(rules, "", 10.0, -30.0)
    assert empty.value.ignore
    with pytest.raises(Unselected, match="matches no pipeline rule") as unmatched:
        select_pipelines(rules, "LSST-WFD", 10.0, -30.0)
    assert unmatched.value.ignore
    failing = rules.model_copy(update={"unmatched": "fail"})
    with pytest.raises(Unselected) as refused:
        select_pipelines(failing, "LSST-WFD", 10.0, -30.0)
    assert not refused.value.ignore

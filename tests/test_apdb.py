"""The APDB: DiaSource ids, association, and lsst-dax-apdb on real SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import astropy.time
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lsst.sphgeom import Angle, Circle, LonLat, UnitVector3d

from pp_devkit.postgres import fresh_database
from prompt_processing.apdb.association import VisitDetector, associate, dia_sources
from prompt_processing.apdb.db import ApdbMissing, init_apdb, open_apdb
from prompt_processing.apdb.ids import INSTRUMENT_CODES, DiaSourceKey, dia_source_id, unpack
from prompt_processing.cli import main
from prompt_processing.imaging.catalogue import Catalogue
from prompt_processing.model import sky
from prompt_processing.model.instruments import LSSTCAM
from prompt_processing.settings import ApdbSettings
from tests.helpers import dia_catalogue

WHERE = VisitDetector("LSSTCam", 20261201, 42, 20261201000042, 94, "r", 61375.1, 30.0)
SHAPE_PX = (512, 512)


@given(st.sampled_from(sorted(INSTRUMENT_CODES)), st.dates(date(2020, 1, 1), date(2064, 1, 1)),
       st.integers(0, 999_999), st.integers(0, 255), st.integers(0, 65_535))  # fmt: skip
def test_dia_source_ids_round_trip_and_fit_a_long(instrument: str, day: date, seq: int, det: int, i: int) -> None:
    key = DiaSourceKey(instrument, int(day.strftime("%Y%m%d")), seq, det, i)
    packed = dia_source_id(key)
    assert 0 <= packed < 2**63 and unpack(packed) == key


def test_a_dia_source_id_field_out_of_range_is_named() -> None:
    with pytest.raises(ValueError, match="index 65536 does not fit in 16 bits"):
        dia_source_id(DiaSourceKey("LSSTCam", 20261201, 1, 94, 65_536))
    with pytest.raises(ValueError, match="dayObs 20261301 is not a date"):
        dia_source_id(DiaSourceKey("LSSTCam", 20261301, 1, 94, 0))


def _catalogue(x_px: list[float], y_px: list[float], flux_e: float = 1000.0) -> Catalogue:
    n = len(x_px)
    return Catalogue(np.array(x_px), np.array(y_px), np.full(n, flux_e), np.full(n, 50.0), np.full(n, flux_e / 50),
                     np.zeros(n, dtype=np.int64))  # fmt: skip


def _sources(where: VisitDetector, x_px: list[float], y_px: list[float], flux_e: float = 1000.0) -> pd.DataFrame:
    wcs = sky.detector_wcs(LSSTCAM, where.detector, 150.0, -30.0, 10.0, SHAPE_PX)
    return dia_sources(where, dia_catalogue(_catalogue(x_px, y_px, flux_e)), wcs, flux_njy_per_e=2.0,
                       processed_mjd_tai=61375.2, aperture_radius_px=3.5, cutout_size_px=31,
                       psf_model_px2=(2.25, 2.25, 0.0))  # fmt: skip


def test_dia_sources_are_placed_through_the_wcs_with_ids_and_fluxes_in_njy() -> None:
    sources = _sources(WHERE, [10.0, 400.0], [20.0, 300.0], flux_e=500.0)
    wcs = sky.detector_wcs(LSSTCAM, 94, 150.0, -30.0, 10.0, SHAPE_PX)
    ra, dec = wcs.pixel_to_world_values(400.0, 300.0)
    assert sources["ra"][1] == pytest.approx(ra) and sources["dec"][1] == pytest.approx(dec)
    assert [unpack(i).index for i in sources["diaSourceId"]] == [0, 1]
    assert list(sources["apFlux"]) == [1000.0, 1000.0] and sources["visit"][0] == WHERE.visit
    assert list(sources["psfFlux"]) == [1100.0, 1100.0] and list(sources["snr"]) == [11.0, 11.0]
    scale_arcsec = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600
    # Round sources of 1.5 px sigma, and the PSF of 1.5 px: 2.25 px^2 in arcsec^2 on both sky axes.
    for column in ("ixx", "iyy", "ixxPSF", "iyyPSF"):
        assert sources[column][0] == pytest.approx(2.25 * scale_arcsec**2, rel=1e-3)
    assert abs(sources["ixy"][0]) < 1e-3 * scale_arcsec**2 and not sources["shape_flag"].any()
    assert not sources["isDipole"].any() and sources["dipoleNdata"][0] == 0 and np.isnan(sources["dipoleLength"][0])


def test_association_joins_the_nearest_object_within_the_radius_and_starts_the_rest() -> None:
    first = associate(_sources(WHERE, [100.0, 300.0], [100.0, 300.0]), pd.DataFrame(), radius_arcsec=1.0)
    assert first.n_new_objects == 2 and list(first.objects["diaObjectId"]) == list(first.sources["diaSourceId"])
    later = VisitDetector(**{**WHERE.__dict__, "seq_num": 43, "visit": WHERE.visit + 1, "midpoint_mjd_tai": 61375.2})
    # 0.6 px (0.12") from the first object; 50 px from the second; a third, new, 2 px (0.4") off the first.
    second = associate(_sources(later, [100.6, 350.0, 102.0], [100.0, 300.0, 100.0], flux_e=3000.0), first.objects,
                       radius_arcsec=1.0)  # fmt: skip
    joined = second.sources.set_index("diaSourceId")["diaObjectId"]
    ids = list(second.sources["diaSourceId"])
    assert joined[ids[0]] == first.objects["diaObjectId"][0]  # the closest pair wins; one source per object
    assert joined[ids[1]] == ids[1] and joined[ids[2]] == ids[2]  # new objects take their source's id
    assert second.n_new_objects == 2
    updated = second.objects.set_index("diaObjectId").loc[first.objects["diaObjectId"][0]]
    assert (updated["nDiaSources"], updated["r_psfFluxNdata"]) == (2, 2)
    assert updated["r_psfFluxMean"] == pytest.approx((2000.0 + 6000.0) / 2 * 1.1)  # PSF fluxes: 1.1 x aperture
    assert updated["lastDiaSourceMjdTai"] == 61375.2 and updated["firstDiaSourceMjdTai"] == 61375.1


def _round_trip(settings: ApdbSettings) -> None:
    assert init_apdb(settings) == "10.0.0"
    apdb = open_apdb(settings)
    first = associate(_sources(WHERE, [100.0, 300.0], [100.0, 300.0]), pd.DataFrame(), radius_arcsec=1.0)
    when = astropy.time.Time(WHERE.midpoint_mjd_tai, format="mjd", scale="tai")
    assert not apdb.containsVisitDetector(WHERE.visit, WHERE.detector)
    apdb.store(when, first.objects, first.sources)
    assert apdb.containsVisitDetector(WHERE.visit, WHERE.detector)
    assert not apdb.containsVisitDetector(WHERE.visit, WHERE.detector + 1)
    region = sky.detector_region(LSSTCAM, 94, 150.0, -30.0, 10.0, 5.0)
    later = VisitDetector(**{**WHERE.__dict__, "seq_num": 43, "visit": WHERE.visit + 1, "midpoint_mjd_tai": 61375.2})
    second = associate(_sources(later, [100.3], [100.0]), apdb.getDiaObjects(region), radius_arcsec=1.0)
    apdb.store(astropy.time.Time(61375.2, format="mjd", scale="tai"), second.objects, second.sources)
    objects = apdb.getDiaObjects(region)  # the current version of each: two objects, one seen twice
    assert sorted(objects["nDiaSources"]) == [1, 2] and len(objects) == 2
    history = apdb.getDiaSources(region, list(objects["diaObjectId"]), astropy.time.Time(61375.3, format="mjd"))
    assert history is not None and len(history) == 3
    assert init_apdb(settings) == "10.0.0"  # again: keeps what is there
    assert open_apdb(settings).containsVisitDetector(WHERE.visit, WHERE.detector)


def test_apdb_on_sqlite(tmp_path: Path) -> None:
    _round_trip(ApdbSettings(db_url=f"sqlite:///{tmp_path / 'apdb' / 'apdb.sqlite3'}"))


def test_apdb_on_postgresql_with_a_namespace() -> None:
    with fresh_database("pp_apdb") as db_url:
        _round_trip(ApdbSettings(db_url=db_url, namespace="apdb"))


def test_an_apdb_never_initialised_is_said_so(tmp_path: Path) -> None:
    with pytest.raises(ApdbMissing, match="run `pp apdb init`"):
        open_apdb(ApdbSettings(db_url=f"sqlite:///{tmp_path / 'nowhere' / 'apdb.sqlite3'}"))


def test_pp_apdb_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'apdb.sqlite3'}"
    monkeypatch.setenv("PP_APDB__DB_URL", url)
    assert main(["apdb", "init"]) == 0
    assert f"APDB: {url} (schema 10.0.0)" in capsys.readouterr().out
    region = Circle(UnitVector3d(LonLat.fromDegrees(150.0, -30.0)), Angle.fromDegrees(1.0))
    assert len(open_apdb(ApdbSettings(db_url=url)).getDiaObjects(region)) == 0

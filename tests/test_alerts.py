"""Alert packets (lsst-alert-packet's schema, Confluent framing) and their FITS cutouts."""

from __future__ import annotations

import io

import fastavro.validation
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from prompt_processing.alerts.cutouts import Stamper
from prompt_processing.alerts.packet import load_schema, schema_id
from prompt_processing.apdb.association import VisitDetector, associate, dia_sources
from prompt_processing.imaging.catalogue import Catalogue
from prompt_processing.model import sky
from prompt_processing.model.instruments import LSSTCAM
from tests.helpers import dia_catalogue

SHAPE_PX = (200, 300)
WCS_94 = sky.detector_wcs(LSSTCAM, 94, 10.0, -45.0, 30.0, SHAPE_PX)


def _rows() -> tuple[dict[str, object], dict[str, object]]:
    where = VisitDetector("LSSTCam", 20261201, 7, 20261201000007, 94, "g", 61375.1, 30.0)
    catalogue = Catalogue(np.array([12.0]), np.array([150.0]), np.array([-800.0]), np.array([40.0]),
                          np.array([-20.0]), np.array([0]))  # fmt: skip
    sources = dia_sources(where, dia_catalogue(catalogue, dipole_lobes_px=4.0), WCS_94, flux_njy_per_e=1.5,
                          processed_mjd_tai=61375.2, aperture_radius_px=3.5, cutout_size_px=31,
                          psf_model_px2=(2.25, 2.25, 0.0))  # fmt: skip
    joined = associate(sources, pd.DataFrame(), radius_arcsec=1.0)
    return joined.sources.to_dict("records")[0], joined.objects.to_dict("records")[0]


def test_an_alert_round_trips_in_confluent_framing_and_validates() -> None:
    schema = load_schema()
    source, obj = _rows()
    stamper = Stamper(*(np.zeros(SHAPE_PX, np.float32) for _ in range(3)), WCS_94, 31)
    payload = schema.encode(schema.record(source, obj, [source], stamper.cutouts(12.0, 150.0)))
    assert payload[0] == 0 and schema_id(payload) == schema.schema_id == 1101  # magic byte, 11.1
    alert = schema.decode(payload)
    fastavro.validation.validate(alert, schema.parsed, raise_errors=True)
    assert alert["diaSourceId"] == source["diaSourceId"] == alert["diaObject"]["diaObjectId"]
    assert alert["diaSource"]["isNegative"] and alert["diaSource"]["psfFlux"] == pytest.approx(-1320.0)
    assert alert["diaSource"]["apFlux"] == pytest.approx(-1200.0) and alert["diaSource"]["snr"] == pytest.approx(-22.0)
    assert alert["diaSource"]["band"] == "g" and alert["diaObject"]["g_psfFluxNdata"] == 1
    assert len(alert["prvDiaSources"]) == 1 and alert["diaSource"]["raErr"] is None  # NaN and missing: null
    dipole = alert["diaSource"]
    scale_arcsec = float(np.sqrt(abs(np.linalg.det(WCS_94.pixel_scale_matrix)))) * 3600
    assert dipole["isDipole"] and dipole["shape_flag"] and dipole["ixx"] is None
    assert dipole["dipoleLength"] == pytest.approx(4.0 * scale_arcsec, rel=1e-4)
    assert dipole["dipoleMeanFlux"] == pytest.approx(2400.0) and dipole["dipoleFluxDiff"] == pytest.approx(-1200.0)
    # Bearing from the negative lobe (4 px along +x) to the positive: the image's -x direction on the sky.
    ra0, dec0 = WCS_94.pixel_to_world_values(14.0, 150.0)
    ra1, dec1 = WCS_94.pixel_to_world_values(10.0, 150.0)
    bearing = np.degrees(np.arctan2((ra1 - ra0) * np.cos(np.radians(dec0)), dec1 - dec0)) % 360
    assert dipole["dipoleAngle"] == pytest.approx(bearing, abs=0.01)


def test_a_missing_required_value_is_named_before_anything_is_sent() -> None:
    schema = load_schema()
    source, obj = _rows()
    del source["midpointMjdTai"]
    with pytest.raises(ValueError, match="required midpointMjdTai is missing"):
        schema.record(source, obj, [], None)


def test_framing_of_another_schema_is_refused() -> None:
    latest, older = load_schema(), load_schema("10.0")
    assert older.schema_id == 1000 and older.version == "10.0"
    source, obj = _rows()
    with pytest.raises(ValueError, match="schema id 1101: expected 0, 1000"):
        older.decode(latest.encode(latest.record(source, obj, [], None)))
    with pytest.raises(ValueError, match=r"no alert schema 99\.9"):
        load_schema("99.9")


def test_cutouts_are_fits_stamps_with_their_own_wcs_padded_off_the_image() -> None:
    rows, columns = SHAPE_PX
    science = np.arange(rows * columns, dtype=np.float32).reshape(SHAPE_PX)
    cut = Stamper(science, science * 2, -science, WCS_94, 31).cutouts(3.4, 100.0)  # 12 columns off the left edge
    with fits.open(io.BytesIO(cut.science)) as hdus:
        stamp, header = hdus[0].data, hdus[0].header
    assert stamp.shape == (31, 31) and np.isnan(stamp[:, :12]).all()
    assert stamp[15, 15] == science[100, 3] and stamp[0, 12] == science[85, 0]
    centre = WCS(header).pixel_to_world_values(15, 15)
    assert np.allclose(centre, WCS_94.pixel_to_world_values(3, 100), atol=1e-10)
    with fits.open(io.BytesIO(cut.template)) as hdus:
        assert hdus[0].data[15, 15] == 2 * science[100, 3]
    with fits.open(io.BytesIO(cut.difference)) as hdus:
        assert hdus[0].data[15, 15] == -science[100, 3]

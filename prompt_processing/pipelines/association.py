"""AssociateTask and PackageAlertsTask: DIA sources joined to the APDB's DiaObjects, then one alert each.

``AssociateTask`` reads the APDB and writes nothing to it: its outputs are what ``tasks/publish.py``
stores (``dia_object``: new DiaObjects and new versions of the ones that gained a source; ``dia_source``:
the DIA sources with their ``diaObjectId``) in one transaction. In ``read_back`` mode (the APDB already
holds this visit-detector but its alerts are not known sent) it outputs the stored rows instead (the
objects' current versions), which publish does not store again: the alerts are rebuilt from what the
APDB holds.

Positions come from the visit image's WCS, fluxes in nJy from its zero point (``prompt_visit_summary``).
"""

from __future__ import annotations

import time
from typing import Any

import astropy.time
import lsst.pex.config as pex_config
import pandas as pd
import pyarrow as pa
from lsst.images import Image
from lsst.pipe.base import (
    InputQuantizedConnection,
    OutputQuantizedConnection,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    QuantumContext,
    Struct,
)
from lsst.sphgeom import ConvexPolygon, LonLat, UnitVector3d

from prompt_processing.alerts.cutouts import Stamper
from prompt_processing.alerts.packet import load_schema
from prompt_processing.apdb import association
from prompt_processing.apdb.db import cached_apdb
from prompt_processing.butler.instruments import band
from prompt_processing.imaging.dia import DiaCatalogue
from prompt_processing.pipelines.calibrate import wcs_from_cards
from prompt_processing.pipelines.connections import VISIT_DETECTOR, visit_connection

_REGION_PADDING_PX = 10


class AssociateConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    detected = visit_connection("dia_source_detector", "ArrowTable", "DIA sources before association.")
    summary = visit_connection("prompt_visit_summary", "StructuredDataDict", "WCS and zero point of the image.")
    dia_sources = visit_connection("dia_source", "ArrowTable", "DIA sources (APDB columns, diaObjectId).",
                                   output=True)  # fmt: skip
    dia_objects = visit_connection("dia_object", "ArrowTable", "Their DiaObjects (new versions, or as stored).",
                                   output=True)  # fmt: skip
    history = visit_connection("dia_source_history", "ArrowTable", "Earlier DIA sources of the same objects.",
                               output=True)  # fmt: skip


class AssociateConfig(PipelineTaskConfig, pipelineConnections=AssociateConnections):
    apdb_url = pex_config.Field[str](doc="SQLAlchemy URL of the APDB (set from PP_APDB__DB_URL).", default="")
    apdb_namespace = pex_config.Field[str](doc="PostgreSQL schema of the APDB ('' for none).", default="")
    radius_arcsec = pex_config.Field[float](doc="Association radius.", default=1.0)
    prior_sources_months = pex_config.Field[int](doc="History read for the alerts (0: none).", default=12)
    read_back = pex_config.Field[bool](doc="Output the APDB's rows of this visit-detector instead.", default=False)
    cutout_size_px = pex_config.Field[int](doc="Recorded as each DIA source's bboxSize.", default=31)
    aperture_radius_px = pex_config.Field[float](doc="Aperture radius of the fluxes (psfNdata).", default=3.5)
    max_dia_sources = pex_config.Field[int](
        doc="More DIA sources than this in one visit-detector is a failure (a bad subtraction), not alerts.",
        default=2000)


class AssociateTask(PipelineTask):
    ConfigClass = AssociateConfig
    _DefaultName = "associate"
    config: AssociateConfig

    def runQuantum(self, butlerQC: QuantumContext, inputRefs: InputQuantizedConnection,
                   outputRefs: OutputQuantizedConnection) -> None:  # fmt: skip
        data_id = butlerQC.quantum.dataId
        assert data_id is not None, "a quantum of visit-detector dimensions has a data id"
        visit: Any = data_id.records["visit"]
        span = visit.timespan
        where = association.VisitDetector(
            str(visit.instrument), int(visit.day_obs), int(visit.seq_num), int(visit.id),
            int(data_id["detector"]), band(str(visit.physical_filter)),
            float((span.begin + (span.end - span.begin) / 2).tai.mjd), float(visit.exposure_time),
        )  # fmt: skip
        outputs = self.run(butlerQC.get(inputRefs.detected), butlerQC.get(inputRefs.summary), where)
        butlerQC.put(outputs, outputRefs)

    def run(self, detected: pa.Table, summary: dict[str, Any], where: association.VisitDetector) -> Struct:
        apdb = cached_apdb(self.config.apdb_url, self.config.apdb_namespace or None)
        wcs = wcs_from_cards(summary["wcs"])
        region = _region(wcs)
        visit_time = astropy.time.Time(where.midpoint_mjd_tai, format="mjd", scale="tai")
        if self.config.read_back:
            sources, objects = _stored(apdb, where, region, visit_time)
        else:
            if detected.num_rows > self.config.max_dia_sources:
                raise ValueError(f"{detected.num_rows} DIA sources, more than max_dia_sources "
                                 f"({self.config.max_dia_sources}): a bad subtraction?")  # fmt: skip
            zero_point, exposure_s = summary["zero_point_mag"], summary["exposure_time_s"]
            xx, yy, xy = summary["psf_model_px2"]
            rows = association.dia_sources(
                where, DiaCatalogue.from_arrow(detected), wcs,
                flux_njy_per_e=10 ** ((31.4 - zero_point) / 2.5) / exposure_s,
                processed_mjd_tai=float(astropy.time.Time(time.time(), format="unix").tai.mjd),
                aperture_radius_px=self.config.aperture_radius_px, cutout_size_px=self.config.cutout_size_px,
                psf_model_px2=(float(xx), float(yy), float(xy)),
            )  # fmt: skip
            joined = association.associate(rows, apdb.getDiaObjects(region), radius_arcsec=self.config.radius_arcsec)
            sources, objects = joined.sources, joined.objects
            self.metadata["n_new_objects"] = joined.n_new_objects
        history = _history(apdb, objects, region, visit_time, where.visit, self.config.prior_sources_months)
        return Struct(dia_sources=_arrow(sources), dia_objects=_arrow(objects), history=_arrow(history))


class PackageAlertsConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    dia_sources = visit_connection("dia_source", "ArrowTable", "The associated DIA sources.")
    dia_objects = visit_connection("dia_object", "ArrowTable", "Their DiaObjects.")
    history = visit_connection("dia_source_history", "ArrowTable", "Earlier DIA sources of the same objects.")
    science = visit_connection("preliminary_visit_image", "ImageV2", "The visit image (science cutouts).")
    matched = visit_connection("template_matched", "ImageV2", "The matched template (template cutouts).")
    difference = visit_connection("difference_image", "ImageV2", "The difference image (difference cutouts).")
    summary = visit_connection("prompt_visit_summary", "StructuredDataDict", "The WCS of all three.")
    alerts = visit_connection("alert_packet", "ArrowTable", "key (diaSourceId), payload (framed Avro), per DIA source.",
                              output=True)  # fmt: skip


class PackageAlertsConfig(PipelineTaskConfig, pipelineConnections=PackageAlertsConnections):
    schema_version = pex_config.Field[str](doc="lsst-alert-packet schema ('' for its latest).", default="")
    cutout_size_px = pex_config.Field[int](doc="Side of the cutouts.", default=31)


class PackageAlertsTask(PipelineTask):
    """One alert per DIA source: diaSource, its diaObject, the object's earlier sources, three FITS cutouts;
    framed for the Confluent wire format. A record that does not fit the schema is a ValueError naming it."""

    ConfigClass = PackageAlertsConfig
    _DefaultName = "package"
    config: PackageAlertsConfig

    def run(self, dia_sources: pa.Table, dia_objects: pa.Table, history: pa.Table, science: Image, matched: Image,
            difference: Image, summary: dict[str, Any], **_: Any) -> Struct:  # fmt: skip
        schema = load_schema(self.config.schema_version or None)
        keys: list[str] = []
        payloads: list[bytes] = []
        if dia_sources.num_rows:
            stamper = Stamper(science.array, matched.array, difference.array, wcs_from_cards(summary["wcs"]),
                              self.config.cutout_size_px)  # fmt: skip
            objects = {int(row["diaObjectId"]): row for row in dia_objects.to_pylist()}
            prior: dict[int, list[dict[str, Any]]] = {}
            for row in history.to_pylist():
                prior.setdefault(int(row["diaObjectId"]), []).append(row)
            for source in dia_sources.to_pylist():
                object_id = int(source["diaObjectId"])
                record = schema.record(source, objects.get(object_id), prior.get(object_id, []),
                                       stamper.cutouts(float(source["x"]), float(source["y"])))  # fmt: skip
                keys.append(str(int(source["diaSourceId"])))
                payloads.append(schema.encode(record))
        self.metadata["schema_id"] = schema.schema_id
        return Struct(alerts=pa.table({"key": pa.array(keys, pa.string()), "payload": pa.array(payloads, pa.binary())}))


def _region(wcs: Any) -> ConvexPolygon:
    """The image's footprint on the sky, padded by a few pixels."""
    columns, rows = wcs.pixel_shape
    pad = _REGION_PADDING_PX
    corners = [(-pad, -pad), (columns + pad, -pad), (columns + pad, rows + pad), (-pad, rows + pad)]
    points = [wcs.pixel_to_world_values(x, y) for x, y in corners]
    return ConvexPolygon([UnitVector3d(LonLat.fromDegrees(float(ra), float(dec))) for ra, dec in points])


def _stored(apdb: Any, where: association.VisitDetector, region: ConvexPolygon,
            visit_time: astropy.time.Time) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """The visit-detector's DIA sources as stored, and their DiaObjects' current versions."""
    found = apdb.getDiaSources(region, None, visit_time)
    sources = pd.DataFrame() if found is None else found
    if len(sources):
        sources = sources[(sources["visit"] == where.visit) & (sources["detector"] == where.detector)]
        sources = sources.sort_values("diaSourceId")
    objects = apdb.getDiaObjects(region)
    if len(sources):
        objects = objects[objects["diaObjectId"].isin(sources["diaObjectId"])]
    return sources, objects


def _history(apdb: Any, objects: pd.DataFrame, region: ConvexPolygon, visit_time: astropy.time.Time, visit: int,
             months: int) -> pd.DataFrame:  # fmt: skip
    """Earlier DIA sources (other visits) of ``objects``, oldest first."""
    known = [int(i) for i in objects["diaObjectId"]] if len(objects) else []
    if not known or months == 0:
        return pd.DataFrame()
    found = apdb.getDiaSources(region, known, visit_time)
    if found is None or not len(found):
        return pd.DataFrame()
    return found[found["visit"] != visit].sort_values("midpointMjdTai")


def _arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)

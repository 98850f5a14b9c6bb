"""The central repository: its dataset types, its collections, how it is made and opened.

Production: a PostgreSQL registry and an S3 datastore (``s3://bucket/repo``); embedded default: a
SQLite registry with its files beside it under the stack's state directory. ``init_central`` is
idempotent: run again, it adds what is missing and changes nothing else.

Collections (``<I>`` is the instrument):

* ``<I>/calib`` (CALIBRATION): bias and flat, certified with validity ranges; their files in RUNs
  ``<I>/calib/<label>``.
* ``templates`` and ``refcats`` (RUN): templates and reference-catalogue shards, on HTM level 7.
* ``<I>/raw/all`` (RUN): raws, in the local repositories.
* ``<I>/prompt/output-<dayObs>/<groupId>-<attempt>`` (RUN): the outputs of one attempt at a visit's
  detectors by one activator; a later attempt never reuses a RUN (``output_run``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import sqlalchemy
from lsst.daf.butler import Butler, Config, DatasetType, DimensionUniverse
from lsst.daf.butler._collection_type import CollectionType
from lsst.resources import ResourcePath

from prompt_processing.butler.instruments import INSTRUMENTS
from prompt_processing.settings import ButlerSettings, S3Settings

RAW, BIAS, FLAT = "raw", "bias", "flat"
TEMPLATE, REFCAT = "pp_sim_template", "pp_sim_refcat"
VISIT_IMAGE, SOURCES, DIA_SOURCES, METADATA = (
    "preliminary_visit_image", "single_visit_star", "dia_source", "prompt_metadata"
)  # fmt: skip
# What the pipelines (prompt_processing/pipelines) write in the local repository besides the outputs above.
POST_ISR, VISIT_SUMMARY, TEMPLATE_DETECTOR = "post_isr_image", "prompt_visit_summary", "template_detector"
DIFFERENCE, MATCHED, DIFFERENCE_SUMMARY = "difference_image", "template_matched", "difference_summary"
DIA_DETECTED, DIA_OBJECTS, DIA_HISTORY = "dia_source_detector", "dia_object", "dia_source_history"
ALERTS = "alert_packet"
TEMPLATES_COLLECTION, REFCATS_COLLECTION = "templates", "refcats"

@dataclass(frozen=True)
class DatasetTypeSpec:
    name: str
    dimensions: tuple[str, ...]
    storage_class: str
    is_calibration: bool = False

    def dataset_type(self, universe: DimensionUniverse) -> DatasetType:
        return DatasetType(self.name, self.dimensions, self.storage_class, universe=universe,
                           isCalibration=self.is_calibration)  # fmt: skip


_VISIT_DETECTOR = ("instrument", "visit", "detector")
DATASET_TYPES: dict[str, DatasetTypeSpec] = {spec.name: spec for spec in (
    DatasetTypeSpec(RAW, ("instrument", "detector", "exposure"), "ImageV2"),
    DatasetTypeSpec(BIAS, ("instrument", "detector"), "ImageV2", is_calibration=True),
    DatasetTypeSpec(FLAT, ("instrument", "detector", "physical_filter"), "ImageV2", is_calibration=True),
    # A template covers one level-9 trixel on its own TAN grid (its sky projection); the pipeline warps the
    # ones overlapping a detector onto its grid. Per instrument: the pixel scale is the instrument's.
    DatasetTypeSpec(TEMPLATE, ("instrument", "htm9"), "ImageV2"),
    DatasetTypeSpec(REFCAT, ("htm7",), "ArrowAstropy"),
    DatasetTypeSpec(VISIT_IMAGE, _VISIT_DETECTOR, "ImageV2"),
    DatasetTypeSpec(SOURCES, _VISIT_DETECTOR, "ArrowTable"),
    DatasetTypeSpec(DIA_SOURCES, _VISIT_DETECTOR, "ArrowTable"),
    DatasetTypeSpec(METADATA, _VISIT_DETECTOR, "StructuredDataDict"),
    DatasetTypeSpec(POST_ISR, ("instrument", "exposure", "detector"), "ImageV2"),
    *(DatasetTypeSpec(name, _VISIT_DETECTOR, "ImageV2") for name in (TEMPLATE_DETECTOR, DIFFERENCE, MATCHED)),
    *(DatasetTypeSpec(name, _VISIT_DETECTOR, "StructuredDataDict") for name in (VISIT_SUMMARY, DIFFERENCE_SUMMARY)),
    *(DatasetTypeSpec(name, _VISIT_DETECTOR, "ArrowTable") for name in (DIA_DETECTED, DIA_OBJECTS, DIA_HISTORY,
                                                                         ALERTS)),
)}  # fmt: skip
OUTPUT_TYPES = (VISIT_IMAGE, SOURCES, DIA_SOURCES, METADATA)
"""What a visit-detector exports to the central repository."""


def calib_collection(instrument: str) -> str:
    return f"{instrument}/calib"


def calib_run(instrument: str, label: str) -> str:
    return f"{instrument}/calib/{label}"


def raw_run(instrument: str) -> str:
    return f"{instrument}/raw/all"


def output_run(instrument: str, day_obs: str, group: str, attempt: str) -> str:
    """The RUN of one attempt's outputs: ``<instrument>/prompt/output-<dayObs>/<groupId>-<attempt>``."""
    return f"{instrument}/prompt/output-{day_obs}/{group}-{attempt}"


def output_run_group(run: str) -> str:
    """The groupId of a RUN made by ``output_run`` (its last part, less ``-<attempt>``)."""
    return run.rsplit("/", 1)[1].rsplit("-", 1)[0]


def output_glob(instrument: str, day_obs: str) -> str:
    """Every output RUN of a night, as a collection glob (``butler query-datasets --collections``)."""
    return f"{instrument}/prompt/output-{day_obs}/*"


def configure_s3(s3: S3Settings) -> None:
    """Point lsst-resources at our S3 endpoint and credentials (it reads them from the process
    environment, so this sets ``S3_ENDPOINT_URL`` and the ``AWS_*`` variables of this process)."""
    os.environ["S3_ENDPOINT_URL"] = s3.url
    os.environ["AWS_ACCESS_KEY_ID"] = s3.access_key_id
    os.environ["AWS_SECRET_ACCESS_KEY"] = s3.secret_access_key.get_secret_value()
    os.environ["AWS_DEFAULT_REGION"] = s3.region


def central_uri(settings: ButlerSettings) -> str:
    if settings.central_repo is None:  # Settings fills it in; a bare ButlerSettings has no stack to default to
        raise ValueError("butler.central_repo is not set")
    return settings.central_repo


def init_central(settings: ButlerSettings, s3: S3Settings, registry_db: str | None = None) -> Butler:
    """Make the central repository if it does not exist, then make sure it has our instruments, dataset
    types and collections. Returns a writeable Butler on it.

    ``registry_db`` (a SQLAlchemy URL) puts the registry in that database, e.g. PostgreSQL, where
    ``btree_gist`` is created first; without it the registry is SQLite inside the repository, which an
    S3 repository cannot have (ValueError).
    """
    uri = central_uri(settings)
    root = ResourcePath(uri, forceDirectory=True)
    if root.scheme == "s3":
        configure_s3(s3)
    if not root.join("butler.yaml").exists():
        config = Config()
        if registry_db is not None:
            if registry_db.startswith("postgresql"):
                create_btree_gist(registry_db)
            config["registry", "db"] = registry_db
        elif root.scheme != "file":
            raise ValueError(f"a central repository at {uri} needs a registry database (--registry-db)")
        Butler.makeRepo(root, config=config, forceConfigRoot=root.scheme == "file")
    butler = Butler.from_config(uri, writeable=True)
    for instrument in INSTRUMENTS.values():
        instrument.register(butler.registry)
    for spec in DATASET_TYPES.values():
        butler.registry.registerDatasetType(spec.dataset_type(butler.dimensions))
    for name in INSTRUMENTS:
        butler.registry.registerCollection(calib_collection(name), CollectionType.CALIBRATION)
        butler.registry.registerRun(raw_run(name))
    butler.registry.registerRun(TEMPLATES_COLLECTION)
    butler.registry.registerRun(REFCATS_COLLECTION)
    return butler


def open_central(settings: ButlerSettings, s3: S3Settings, *, writeable: bool = False) -> Butler:
    """A Butler on the central repository; read-only unless ``writeable`` (the Butler writer's)."""
    uri = central_uri(settings)
    if uri.startswith("s3:"):
        configure_s3(s3)
    return Butler.from_config(uri, writeable=writeable)


def create_btree_gist(db_url: str) -> None:
    """``CREATE EXTENSION IF NOT EXISTS btree_gist``: a PostgreSQL registry needs it for its
    calibration-validity constraints."""
    engine = sqlalchemy.create_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
    finally:
        engine.dispose()

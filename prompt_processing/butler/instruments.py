"""Our cameras as ``lsst.pipe.base.Instrument`` subclasses (obs_lsst is not installable here).

``register()`` syncs the instrument, its physical filters (with bands) and its detectors into a
registry, idempotently; ``Instrument.from_string("LSSTCam", registry)`` finds the class again
through the ``class_name`` recorded with the instrument. Detector names and filters come from
``model.instruments``, so the Butler and the fan-out agree on what a detector is called.
"""

from __future__ import annotations

from typing import ClassVar

from lsst.daf.butler import DataId, Formatter, FormatterV2
from lsst.daf.butler.registry import Registry
from lsst.pipe.base import Instrument

from prompt_processing.model.instruments import HSC, LATISS, LSSTCAM
from prompt_processing.model.instruments import Instrument as Camera

# The band of each physical filter: the letter Rubin's obs packages give it.
_BANDS = {
    "u_24": "u", "g_6": "g", "r_57": "r", "i_39": "i", "z_20": "z", "y_10": "y",
    "SDSSg_65mm~empty": "g", "SDSSr_65mm~empty": "r", "SDSSi_65mm~empty": "i",
    "HSC-G": "g", "HSC-R2": "r", "HSC-I2": "i", "HSC-Z": "z", "HSC-Y": "y",
}  # fmt: skip

MAX_EXPOSURE_ID = 2**53
"""Exposure and visit ids are ``dayObs * 10**6 + seqNum`` (``model.layout.exposure_id``)."""


class PromptInstrument(Instrument):
    """An instrument whose records come from a ``model.instruments.Instrument`` (``camera``)."""

    camera: ClassVar[Camera]

    @classmethod
    def getName(cls) -> str:
        return cls.camera.name

    def register(self, registry: Registry, *, update: bool = False) -> None:
        """Instrument, physical filter and detector records, in one transaction; existing identical
        records are left alone, a differing one raises ``ConflictingDefinitionError`` (unless ``update``)."""
        camera = self.camera
        with registry.transaction():
            registry.syncDimensionData(
                "instrument",
                {"name": camera.name, "detector_max": camera.n_detectors, "visit_max": MAX_EXPOSURE_ID,
                 "exposure_max": MAX_EXPOSURE_ID, "visit_system": 0,
                 "class_name": f"{type(self).__module__}.{type(self).__qualname__}"},
                update=update,
            )  # fmt: skip
            for name in camera.filters:
                record = {"instrument": camera.name, "name": name, "band": band(name)}
                registry.syncDimensionData("physical_filter", record, update=update)
            for detector, full_name in enumerate(camera.detector_names):
                raft, _, sensor = full_name.rpartition("_")
                registry.syncDimensionData(
                    "detector",
                    {"instrument": camera.name, "id": detector, "full_name": full_name, "raft": raft or None,
                     "name_in_raft": sensor, "purpose": "SCIENCE"},
                    update=update,
                )  # fmt: skip
            registry.syncDimensionData("visit_system", {"instrument": camera.name, "id": 0, "name": "one-to-one"})

    def getRawFormatter(self, dataId: DataId) -> type[Formatter | FormatterV2]:
        """Raws are ingested with ``put`` as ``ImageV2`` (``butler.local``), never with a raw formatter."""
        raise NotImplementedError(f"{self.getName()} raws are put as ImageV2 images, not ingested from files")


class LsstCam(PromptInstrument):
    camera = LSSTCAM


class Latiss(PromptInstrument):
    camera = LATISS


class Hsc(PromptInstrument):
    camera = HSC


INSTRUMENTS: dict[str, PromptInstrument] = {cls.camera.name: cls() for cls in (LsstCam, Latiss, Hsc)}


def band(physical_filter: str) -> str:
    """The band of a physical filter (ValueError if unknown)."""
    try:
        return _BANDS[physical_filter]
    except KeyError:
        raise ValueError(f"unknown physical filter {physical_filter!r}") from None

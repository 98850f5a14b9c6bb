"""Object-store layout: where the camera writes raws and sidecars (and the simulator its truth).

Pure functions. Raw keys follow the camera's layout,
``<instrument>/<dayObs>/<obsId>/<obsId>_<detectorName>.fits`` with a ``.json`` sidecar;
``parse_raw_key`` accepts exactly that and nothing else (no traversal, no stray files).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prompt_processing.model.instruments import Instrument, get_instrument

_RAW_KEY = re.compile(
    r"^(?P<instrument>[A-Za-z]+)/(?P<day_obs>\d{8})/(?P<obs_id>[A-Z]{2,4}_?[A-Z]?_\d{8}_\d{6})/"
    r"(?P=obs_id)_(?P<detector_name>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)?)\.(?P<ext>fits|json)$"
)


class LayoutError(ValueError):
    """An object key that is not a raw image or sidecar of a known instrument."""


@dataclass(frozen=True)
class RawKey:
    """A parsed raw object key."""

    instrument: Instrument
    day_obs: str
    obs_id: str
    detector: int
    ext: str

    @property
    def fits_key(self) -> str:
        return raw_key(self.instrument, self.day_obs, self.obs_id, self.detector, "fits")

    @property
    def sidecar_key(self) -> str:
        return raw_key(self.instrument, self.day_obs, self.obs_id, self.detector, "json")


def obs_id(instrument: Instrument, day_obs: str, seq_num: int) -> str:
    """The camera's exposure id, e.g. ``MC_O_20261128_000123``."""
    return f"{instrument.obs_id_prefix}_{day_obs}_{seq_num:06d}"


def raw_key(instrument: Instrument, day_obs: str, obs: str, detector: int, ext: str = "fits") -> str:
    return f"{instrument.name}/{day_obs}/{obs}/{obs}_{instrument.detector_name(detector)}.{ext}"


def parse_raw_key(key: str) -> RawKey:
    """Parse a raw image or sidecar key; raise LayoutError saying what is wrong."""
    if len(key) > 256 or ".." in key or key.startswith("/") or "\\" in key:
        raise LayoutError(f"refusing suspicious key {key[:80]!r}")
    match = _RAW_KEY.match(key)
    if match is None:
        raise LayoutError(f"{key[:120]!r} is not <instrument>/<dayObs>/<obsId>/<obsId>_<detector>.fits|json")
    instrument = get_instrument(match["instrument"])
    if instrument is None or instrument.name != match["instrument"]:
        raise LayoutError(f"unknown instrument {match['instrument']!r} in {key[:120]!r}")
    if not match["obs_id"].startswith(instrument.obs_id_prefix):
        raise LayoutError(f"obsId {match['obs_id']!r} is not a {instrument.name} exposure")
    try:
        detector = instrument.detector_names.index(match["detector_name"])
    except ValueError:
        raise LayoutError(f"{instrument.name} has no detector {match['detector_name']!r}") from None
    return RawKey(instrument, match["day_obs"], match["obs_id"], detector, match["ext"])


def truth_key(instrument: str, group: str, detector: int) -> str:
    """The simulator's injected transients for one visit-detector (JSON list), for evaluation."""
    return f"truth/{instrument}/{group}/det{detector:03d}.json"


"""Object-store layout: where the camera writes raws and sidecars (and the simulator its truth).

Pure functions. Raw keys follow the camera's layout,
``<instrument>/<dayObs>/<obsId>/<obsId>_<detectorName>.fits`` with a ``.json`` sidecar;
``parse_raw_key`` accepts exactly that and nothing else (no traversal, no stray files, ASCII only), and
its ``LayoutError`` names the part of the key at fault: ``dayObs: '2026112' is not 8 digits; ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prompt_processing.model.instruments import Instrument, get_instrument

_LAYOUT = "<instrument>/<dayObs>/<obsId>/<obsId>_<detector>.fits|json"
# Each part of a key: its pattern (ASCII only: ``\d`` would take any script's digits) and what it should be.
_PARTS = {
    "instrument": (re.compile(r"[A-Za-z]+"), "letters"),
    "dayObs": (re.compile(r"[0-9]{8}"), "8 digits"),
    "obsId": (re.compile(r"[A-Z]{2,4}_?[A-Z]?_[0-9]{8}_[0-9]{6}"), "an exposure id like MC_O_20261128_000123"),
    "detector": (re.compile(r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)?"), "a detector name like R22_S11"),
    "extension": (re.compile(r"fits|json"), "fits or json"),
}


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
    """Parse a raw image or sidecar key; raise LayoutError ``<part>: <why>``, the part being ``key`` (the
    whole), ``instrument``, ``dayObs``, ``obsId``, ``detector`` or ``extension``. An accepted key is ASCII
    and is what ``raw_key`` builds from the result."""
    if len(key) > 256 or ".." in key or key.startswith("/") or "\\" in key:
        raise LayoutError(f"key: refusing suspicious key {key[:80]!r}")
    parts = key.split("/")
    if len(parts) != 4:
        raise LayoutError(f"key: {key[:120]!r} is not {_LAYOUT}")
    name, day_obs, obs, file = parts
    for part, value in (("instrument", name), ("dayObs", day_obs), ("obsId", obs)):
        _check(part, value, key)
    if not file.startswith(f"{obs}_"):
        raise LayoutError(f"obsId: the file name does not start with {obs!r}; {key[:120]!r} is not {_LAYOUT}")
    detector_name, ext = [*file.removeprefix(f"{obs}_").rsplit(".", 1), ""][:2]
    _check("detector", detector_name, key)
    _check("extension", ext, key)
    instrument = get_instrument(name)
    if instrument is None or instrument.name != name:
        raise LayoutError(f"instrument: unknown instrument {name!r} in {key[:120]!r}")
    if not obs.startswith(instrument.obs_id_prefix):
        raise LayoutError(f"obsId: {obs!r} is not a {instrument.name} exposure")
    try:
        detector = instrument.detector_names.index(detector_name)
    except ValueError:
        raise LayoutError(f"detector: {instrument.name} has no detector {detector_name!r}") from None
    return RawKey(instrument, day_obs, obs, detector, ext)


def _check(part: str, value: str, key: str) -> None:
    pattern, should_be = _PARTS[part]
    if not pattern.fullmatch(value):
        raise LayoutError(f"{part}: {value[:40]!r} is not {should_be}; {key[:120]!r} is not {_LAYOUT}")


def truth_key(instrument: str, group: str, detector: int) -> str:
    """The simulator's injected transients for one visit-detector (JSON list), for evaluation."""
    return f"truth/{instrument}/{group}/det{detector:03d}.json"


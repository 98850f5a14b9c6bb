"""The cameras we fan work out for, their detectors, and which of them are active.

Pure data and pure functions: no I/O, so detector selection is table-tested.
"""

from __future__ import annotations

from dataclasses import dataclass

from prompt_processing.settings import InstrumentSettings

# Rubin production's LSSTCam detectors with no work (vignetted or faulty): 189 - 17 = 172 active.
LSSTCAM_PRODUCTION_DISABLED: tuple[int, ...] = (
    0, 1, 19, 20, 27, 30, 65, 68, 120, 122, 123, 158, 161, 168, 169, 187, 188,
)  # fmt: skip


def _lsstcam_detector_names() -> tuple[str, ...]:
    """Science detectors in obs_lsst order: 21 rafts (5x5 less corners) x 9 sensors."""
    rafts = [f"R{row}{col}" for row in range(5) for col in range(5) if (row, col) not in _CORNERS]
    sensors = [f"S{row}{col}" for row in range(3) for col in range(3)]
    return tuple(f"{raft}_{sensor}" for raft in rafts for sensor in sensors)


_CORNERS = {(0, 0), (0, 4), (4, 0), (4, 4)}


@dataclass(frozen=True)
class Instrument:
    """A camera: its canonical name, detector names by id, and its named disabled lists."""

    name: str
    detector_names: tuple[str, ...]
    filters: tuple[str, ...]
    obs_id_prefix: str
    named_disabled: dict[str, tuple[int, ...]]

    @property
    def n_detectors(self) -> int:
        return len(self.detector_names)

    def detector_name(self, detector: int) -> str:
        return self.detector_names[detector]

    def active_detectors(self, config: InstrumentSettings) -> tuple[int, ...]:
        """Detector ids that get one stream entry per visit, ascending.

        ``only_detectors`` (if set) picks the candidates, then ``disabled_detectors`` removes
        some. Raises ValueError for a named list this instrument does not have or an id
        outside ``0..n_detectors-1``, so a typo in configuration fails at start-up.
        """
        disabled = config.disabled_detectors
        if isinstance(disabled, str):
            if disabled == "none":
                disabled_ids: tuple[int, ...] = ()
            elif disabled in self.named_disabled:
                disabled_ids = self.named_disabled[disabled]
            else:
                known = ", ".join(["none", *self.named_disabled]) or "none"
                raise ValueError(f"{self.name} has no disabled-detector list {disabled!r} (known: {known})")
        else:
            disabled_ids = tuple(disabled)
        only = range(self.n_detectors) if config.only_detectors is None else sorted(set(config.only_detectors))
        bad = sorted(d for d in (*disabled_ids, *only) if not 0 <= d < self.n_detectors)
        if bad:
            raise ValueError(f"{self.name} has detectors 0..{self.n_detectors - 1}; got {bad}")
        skip = set(disabled_ids)
        return tuple(d for d in only if d not in skip)


LSSTCAM = Instrument(
    name="LSSTCam",
    detector_names=_lsstcam_detector_names(),
    filters=("u_24", "g_6", "r_57", "i_39", "z_20", "y_10"),
    obs_id_prefix="MC_O",
    named_disabled={"production": LSSTCAM_PRODUCTION_DISABLED},
)
LATISS = Instrument(
    name="LATISS",
    detector_names=("RXX_S00",),
    filters=("SDSSg_65mm~empty", "SDSSr_65mm~empty", "SDSSi_65mm~empty"),
    obs_id_prefix="AT_O",
    named_disabled={},
)
HSC = Instrument(
    name="HSC",
    detector_names=tuple(f"ccd{d:03d}" for d in range(104)),
    filters=("HSC-G", "HSC-R2", "HSC-I2", "HSC-Z", "HSC-Y"),
    obs_id_prefix="HSCA",
    named_disabled={},
)

KNOWN_INSTRUMENTS: dict[str, Instrument] = {i.name.lower(): i for i in (LSSTCAM, LATISS, HSC)}


def get_instrument(name: str) -> Instrument | None:
    """The instrument called ``name`` (case-insensitive), or None if unknown."""
    return KNOWN_INSTRUMENTS.get(name.lower())


def active_detector_table(configs: dict[str, InstrumentSettings]) -> dict[str, tuple[int, ...]]:
    """Canonical instrument name -> active detectors, for every enabled configured instrument.

    Raises ValueError naming the entry when configuration names an unknown instrument.
    """
    table: dict[str, tuple[int, ...]] = {}
    for name, config in configs.items():
        instrument = get_instrument(name)
        if instrument is None:
            known = ", ".join(i.name for i in KNOWN_INSTRUMENTS.values())
            raise ValueError(f"unknown instrument {name!r} in configuration (known: {known})")
        if config.enabled:
            table[instrument.name] = instrument.active_detectors(config)
    return table

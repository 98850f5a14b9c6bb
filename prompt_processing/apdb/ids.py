"""DiaSource ids: unique per (instrument, night, exposure, detector, index), the same on every reprocessing.

``diaSourceId`` packs, from the top bit down: the instrument's code (2 bits), days since 2020-01-01
of its dayObs (14 bits, to 2064), the visit's seqNum (20 bits, up to 999,999 as in exposure ids),
the detector (8 bits) and the source's index in the visit-detector (16 bits): 60 bits, a positive
signed 64-bit integer as the APDB and the alert schema want. A new DiaObject takes the id of the
DiaSource that started it (Rubin's convention), so DiaObject ids are unique too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

INSTRUMENT_CODES = {"LSSTCam": 0, "LATISS": 1, "HSC": 2}
_EPOCH = date(2020, 1, 1)
_DAY_BITS, _SEQ_BITS, _DETECTOR_BITS, _INDEX_BITS = 14, 20, 8, 16
MAX_SOURCES = 1 << _INDEX_BITS


@dataclass(frozen=True)
class DiaSourceKey:
    """What a diaSourceId is made of."""

    instrument: str
    day_obs: int  # YYYYMMDD
    seq_num: int
    detector: int
    index: int


def dia_source_id(key: DiaSourceKey) -> int:
    """The packed id of ``key``; ValueError for a field outside its bits (named in the message)."""
    days = (_day(key.day_obs) - _EPOCH).days
    fields = (("instrument", INSTRUMENT_CODES.get(key.instrument, -1), 2), ("dayObs", days, _DAY_BITS),
              ("seqNum", key.seq_num, _SEQ_BITS), ("detector", key.detector, _DETECTOR_BITS),
              ("index", key.index, _INDEX_BITS))  # fmt: skip
    packed = 0
    for name, value, bits in fields:
        if not 0 <= value < (1 << bits):
            raise ValueError(f"diaSourceId: {name} {value} does not fit in {bits} bits ({key})")
        packed = (packed << bits) | value
    return packed


def unpack(dia_source_id: int) -> DiaSourceKey:
    """The fields of a packed id (``dia_source_id``'s inverse)."""
    index = dia_source_id & (MAX_SOURCES - 1)
    rest = dia_source_id >> _INDEX_BITS
    detector, rest = rest & ((1 << _DETECTOR_BITS) - 1), rest >> _DETECTOR_BITS
    seq_num, rest = rest & ((1 << _SEQ_BITS) - 1), rest >> _SEQ_BITS
    days, code = rest & ((1 << _DAY_BITS) - 1), rest >> _DAY_BITS
    instrument = next(name for name, c in INSTRUMENT_CODES.items() if c == code)
    day = date.fromordinal(_EPOCH.toordinal() + days)
    return DiaSourceKey(instrument, int(day.strftime("%Y%m%d")), seq_num, detector, index)


def _day(day_obs: int) -> date:
    try:
        return date(day_obs // 10_000, day_obs // 100 % 100, day_obs % 100)
    except ValueError as exc:
        raise ValueError(f"diaSourceId: dayObs {day_obs} is not a date") from exc

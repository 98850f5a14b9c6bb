"""A visit's dimension records, built from a raw's FITS header and the visit's NextVisit.

What the camera writes in each raw's header (the simulator writes the same cards):
``INSTRUME``, ``DETECTOR``, ``GROUPID``, ``OBSID``, ``DAYOBS``, ``SEQNUM``, ``CURINDEX`` (snap,
1-based), ``FILTER``, ``EXPTIME`` (s), ``DATE-BEG`` (TAI, ISO), ``PROGRAM``; the pointing
(``RA``/``DEC``/``ROTPA``) is taken from the NextVisit, so the regions match what preload predicted.
``check_header`` refuses a raw whose header disagrees with its NextVisit;
``visit_records`` then gives every record the raw's datasets need, deterministically: each
detector of a visit produces the same day_obs, group, exposure and visit records, so inserting them
again (another detector, a replayed event) changes nothing.

Ids: exposure = ``dayObs * 10**6 + seqNum`` (``exposure_id``); a visit is one-to-one with its first
snap's exposure (visit system 0, "one-to-one"), so visit id = that exposure's id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import astropy.time
from lsst.daf.butler import DimensionRecord, DimensionUniverse, Timespan
from lsst.sphgeom import Angle, Circle, LonLat, UnitVector3d

from prompt_processing.model import sky
from prompt_processing.model.events import CoordinateSystem, NextVisit
from prompt_processing.model.instruments import Instrument, get_instrument

HeaderValue = str | int | float | bool
REQUIRED_CARDS = ("INSTRUME", "DETECTOR", "GROUPID", "OBSID", "DAYOBS", "SEQNUM", "CURINDEX", "FILTER",
                  "EXPTIME", "DATE-BEG")  # fmt: skip


class HeaderMismatch(ValueError):
    """A raw's header is incomplete or disagrees with the NextVisit it was taken for."""


@dataclass(frozen=True)
class RawHeader:
    """The cards of one raw that the Butler needs, checked."""

    instrument: str
    detector: int
    group: str
    obs_id: str
    day_obs: int
    seq_num: int
    snap: int  # 0-based
    physical_filter: str
    exposure_time_s: float
    begin_tai: astropy.time.Time
    program: str

    @property
    def exposure_id(self) -> int:
        return exposure_id(self.day_obs, self.seq_num)

    @property
    def visit_id(self) -> int:
        """The visit is numbered after its first snap's exposure."""
        return exposure_id(self.day_obs, self.seq_num - self.snap)


def exposure_id(day_obs: int, seq_num: int) -> int:
    """``dayObs * 10**6 + seqNum`` (ValueError if seqNum is not in 0..999999)."""
    if not 0 <= seq_num < 1_000_000:
        raise ValueError(f"seqNum {seq_num} is not in 0..999999")
    return day_obs * 1_000_000 + seq_num


def check_header(header: Mapping[str, HeaderValue], visit: NextVisit, detector: int, snap: int) -> RawHeader:
    """The raw's header as a ``RawHeader``; ``HeaderMismatch`` naming the card if a card is missing or
    the raw belongs to another instrument, group, detector, snap or filter than ``visit`` expects."""
    missing = [card for card in REQUIRED_CARDS if card not in header]
    if missing:
        raise HeaderMismatch(f"raw header lacks {', '.join(missing)}")
    expected = {"INSTRUME": visit.instrument, "GROUPID": visit.groupId, "DETECTOR": detector,
                "CURINDEX": snap + 1, "FILTER": visit.filters}  # fmt: skip
    for card, value in expected.items():
        if header[card] != value:
            raise HeaderMismatch(f"raw header {card}={header[card]!r} but the visit expects {value!r}")
    try:
        begin = astropy.time.Time(str(header["DATE-BEG"]), format="isot", scale="tai")
        return RawHeader(
            instrument=str(header["INSTRUME"]), detector=int(header["DETECTOR"]), group=str(header["GROUPID"]),
            obs_id=str(header["OBSID"]), day_obs=int(header["DAYOBS"]), seq_num=int(header["SEQNUM"]), snap=snap,
            physical_filter=str(header["FILTER"]), exposure_time_s=float(header["EXPTIME"]), begin_tai=begin,
            program=str(header.get("PROGRAM", visit.survey)),
        )  # fmt: skip
    except ValueError as exc:
        raise HeaderMismatch(f"raw header has an unreadable card: {exc}") from exc


def visit_records(universe: DimensionUniverse, visit: NextVisit, raw: RawHeader) -> list[DimensionRecord]:
    """day_obs, group, exposure, visit, visit_definition, visit_system_membership and
    visit_detector_region records of ``raw``, in an order that satisfies their foreign keys."""
    instrument = get_instrument(raw.instrument)
    if instrument is None:
        raise HeaderMismatch(f"unknown instrument {raw.instrument!r}")
    if visit.coordinateSystem != CoordinateSystem.ICRS:
        raise HeaderMismatch(f"cannot place visit {visit.groupId} on the sky: coordinateSystem is "
                             f"{visit.coordinateSystem.name}, not ICRS")  # fmt: skip
    name, ra, dec, angle = raw.instrument, visit.position[0], visit.position[1], visit.cameraAngle
    snap_s = raw.exposure_time_s
    visit_begin = raw.begin_tai - _seconds(raw.snap * snap_s)
    visit_span = Timespan(visit_begin, visit_begin + _seconds(max(visit.duration, snap_s)))
    exposure_span = Timespan(raw.begin_tai, raw.begin_tai + _seconds(snap_s))
    day_start = astropy.time.Time(f"{str(raw.day_obs)[:4]}-{str(raw.day_obs)[4:6]}-{str(raw.day_obs)[6:]}T12:00:00",
                                  format="isot", scale="utc").tai  # fmt: skip
    detector_region = sky.detector_region(instrument, raw.detector, ra, dec, angle)
    common = {"instrument": name, "day_obs": raw.day_obs, "physical_filter": raw.physical_filter,
              "target_name": visit.survey, "observation_reason": visit.survey,
              "science_program": raw.program}  # fmt: skip
    rows: list[tuple[str, dict[str, object]]] = [
        ("day_obs", {"instrument": name, "id": raw.day_obs,
                     "timespan": Timespan(day_start, day_start + _seconds(86400))}),
        ("group", {"instrument": name, "name": raw.group}),
        ("exposure", {**common, "id": raw.exposure_id, "obs_id": raw.obs_id, "group": raw.group,
                      "seq_num": raw.seq_num, "seq_start": raw.seq_num - raw.snap,
                      "seq_end": raw.seq_num - raw.snap + max(visit.nimages, 1) - 1,
                      "exposure_time": snap_s, "dark_time": snap_s, "observation_type": "science",
                      "tracking_ra": ra, "tracking_dec": dec, "sky_angle": angle, "timespan": exposure_span,
                      "has_simulated": True, "can_see_sky": True}),
        ("visit", {**common, "id": raw.visit_id, "seq_num": raw.seq_num - raw.snap, "exposure_time": visit.duration,
                   "timespan": visit_span, "region": _field_of_view(instrument, ra, dec)}),
        ("visit_definition", {"instrument": name, "exposure": raw.exposure_id, "visit": raw.visit_id}),
        ("visit_system_membership", {"instrument": name, "visit_system": 0, "visit": raw.visit_id}),
        ("visit_detector_region", {"instrument": name, "visit": raw.visit_id, "detector": raw.detector,
                                   "region": detector_region}),
    ]  # fmt: skip
    return [universe[element].RecordClass(**fields) for element, fields in rows]


def _field_of_view(instrument: Instrument, ra_deg: float, dec_deg: float) -> Circle:
    """A circle around the boresight holding every detector (a visit's region)."""
    centre = UnitVector3d(LonLat.fromDegrees(ra_deg, dec_deg))
    return Circle(centre, Angle.fromDegrees(sky.field_radius_deg(instrument)))


def _seconds(value: float) -> astropy.time.TimeDelta:
    return astropy.time.TimeDelta(value, format="sec")

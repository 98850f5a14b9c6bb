"""Which pipelines a visit gets: the first ``PipelineRule`` matching its survey (and position, if the
rule says), Rubin-style. An empty list, or no matching rule with ``unmatched: ignore``, means the
visit is not processed: ``Unselected`` says why, and the caller reports it as ignored."""

from __future__ import annotations

from fnmatch import fnmatchcase

from prompt_processing.settings import PipelineRule, PipelinesSettings


class Unselected(Exception):
    """No pipeline for this visit; ``ignore`` says whether that is by configuration (ignored) or a failure."""

    def __init__(self, reason: str, *, ignore: bool) -> None:
        super().__init__(reason)
        self.ignore = ignore


def select_pipelines(settings: PipelinesSettings, survey: str, ra_deg: float, dec_deg: float) -> list[str]:
    """The pipelines to try for a visit of ``survey`` pointed at (``ra_deg``, ``dec_deg``), in order."""
    for index, rule in enumerate(settings.rules):
        if _matches(rule, survey, ra_deg, dec_deg):
            if not rule.pipelines:
                raise Unselected(f"survey {survey!r}: rule {index} ({rule.survey!r}) gives no pipeline", ignore=True)
            return list(rule.pipelines)
    raise Unselected(f"survey {survey!r} matches no pipeline rule (pipelines.unmatched={settings.unmatched})",
                     ignore=settings.unmatched == "ignore")  # fmt: skip


def _matches(rule: PipelineRule, survey: str, ra_deg: float, dec_deg: float) -> bool:
    if not (survey == "" if rule.survey == "" else fnmatchcase(survey, rule.survey)):
        return False
    if rule.ra_deg is not None and not rule.ra_deg[0] <= ra_deg % 360.0 <= rule.ra_deg[1]:
        return False
    return rule.dec_deg is None or rule.dec_deg[0] <= dec_deg <= rule.dec_deg[1]

"""Fuzzing at scale: python -m bench.fuzz --cases 10000 --output RELIABILITY.md [--seed N] [--only NAME ...].

Runs the properties of ``pp_devkit.fuzzing`` (which ``tests/test_fuzz.py`` runs at a few hundred cases) at
``--cases`` hypothesis cases per parser of the service's inputs, and counts, per parser, the inputs it
accepted, those it refused, and the crashes: any exception but its documented refusal, a refusal whose reason
does not name the field, or an accepted input whose result is not usable (does not round-trip).

Writes the ``## Fuzzing`` section of ``--output`` (created with a ``# Reliability`` title when missing; only
this section is replaced, up to the next ``## `` heading) with the table and the command that produced it.
Exits 1 when there was a crash, and lists the first inputs that broke each parser.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pp_devkit.fuzzing import PropertyViolation, Target, targets

SECTION = "## Fuzzing"
SHOWN_CRASHES = 3
CHUNK = 2_000  # cases per hypothesis run: its bookkeeping grows ~60 kB a case, freed when a run ends


@dataclass
class Tally:
    """What one parser did with its cases."""

    target: Target
    cases: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: list[tuple[str, str]] = field(default_factory=list)  # (how the property broke, the input)
    elapsed_s: float = 0.0


def fuzz(target: Target, cases: int, rng_seed: int, advance: Callable[[], None]) -> Tally:
    """Run ``target.check`` on ``cases`` generated cases (generation only: a crash is counted, not shrunk), in
    hypothesis runs of ``CHUNK`` cases seeded ``rng_seed``, ``rng_seed + 1``, ..."""
    tally = Tally(target)

    def one(case: Any) -> None:
        tally.cases += 1
        try:
            outcome = target.check(case)
        except PropertyViolation as exc:
            tally.crashes.append((str(exc), repr(case)[:300]))
        else:
            if outcome == "accepted":
                tally.accepted += 1
            else:
                tally.rejected += 1
        advance()

    started = time.perf_counter()
    for chunk, first in enumerate(range(0, cases, CHUNK)):
        quiet = settings(max_examples=min(CHUNK, cases - first), deadline=None, database=None,
                         phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        seed(rng_seed + chunk)(quiet(given(target.cases)(one)))()
    tally.elapsed_s = time.perf_counter() - started
    return tally


def render(tallies: list[Tally], command: str, rng_seed: int, cases: int) -> str:
    """The ``## Fuzzing`` section: how, the table, and the crashing inputs if any."""
    total = sum(t.elapsed_s for t in tallies)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"hypothesis {version('hypothesis')}")  # fmt: skip
    lines = [
        SECTION, "",
        f"`{command}` ({when}; {host}; seed {rng_seed}: `--seed {rng_seed}` draws the same cases).", "",
        f"Each parser of the service's inputs gets {cases:,} hypothesis cases from `pp_devkit/fuzzing.py`: valid "
        "inputs made as their producers make them, mutated at the byte level (bit flips, inserted, deleted or "
        "duplicated bytes, truncation, `1e999`, `NaN`, a 5,000-digit number, invalid UTF-8, nesting 100,000 deep) "
        "and in their structure (a field dropped, renamed or added; its value replaced by one of the wrong type, "
        "one at an edge of its type, or another field's). A **crash** is any exception but the parser's "
        "refusal, a refusal whose reason does not name the field (`groupId: ...`, "
        "`Records[0].s3.object.key: ...`; `message: ...` for input that is not a document at all), or an "
        "accepted input whose result does not round-trip. `tests/test_fuzz.py` runs the same properties at "
        "300 cases each in `make test`.", "",
        "| input | parser | refusal | cases | accepted | rejected | crashes | time |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for t in tallies:
        lines.append(f"| {t.target.name} | `{t.target.parser}` | `{t.target.refusal}` | {t.cases:,} | "
                     f"{t.accepted:,} | {t.rejected:,} | {len(t.crashes)} | {t.elapsed_s:.0f} s |")  # fmt: skip
    lines.append(f"| **all** | | | {sum(t.cases for t in tallies):,} | {sum(t.accepted for t in tallies):,} | "
                 f"{sum(t.rejected for t in tallies):,} | {sum(len(t.crashes) for t in tallies)} | {total:.0f} s |")
    broken = [t for t in tallies if t.crashes]
    if broken:
        lines += ["", "### Crashes", ""]
        for t in broken:
            lines += [f"- {t.target.name}: {how[:200]}; input `{case[:200]}`"
                      for how, case in t.crashes[:SHOWN_CRASHES]]  # fmt: skip
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str) -> None:
    """Write ``section`` into ``path`` (``# Reliability`` if new), replacing only its own earlier version."""
    text = path.read_text() if path.exists() else "# Reliability\n"
    if SECTION + "\n" in text:
        start = text.index(SECTION + "\n")
        following = text.find("\n## ", start + len(SECTION))
        end = len(text) if following < 0 else following + 1
        text = text[:start] + section + ("\n" if following >= 0 else "") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000, help="hypothesis cases per parser")
    parser.add_argument("--output", type=Path, default=Path("RELIABILITY.md"))
    parser.add_argument("--seed", type=int, default=None, help="draw the same cases again (default: random)")
    parser.add_argument("--only", nargs="*", default=[], help="fuzz only these inputs (e.g. next-visit raw-key)")
    args = parser.parse_args(argv)
    rng_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    chosen = [t for t in targets() if not args.only or t.name in args.only]
    tallies = []
    columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        for target in chosen:
            task = progress.add_task(target.name, total=args.cases)
            tallies.append(fuzz(target, args.cases, rng_seed, functools.partial(progress.advance, task)))
            progress.update(task, completed=args.cases)
    command = "python -m bench.fuzz " + shlex.join(sys.argv[1:] if argv is None else argv)
    section = render(tallies, command, rng_seed, args.cases)
    replace_section(args.output, section)
    print(section)
    return 1 if any(t.crashes for t in tallies) else 0


if __name__ == "__main__":
    raise SystemExit(main())

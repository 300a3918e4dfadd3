"""Decide when a received study is ready for analysis (pure: the clock is a parameter).

Three rules, checked in this order of precedence (the first that holds names the trigger):

1. ``complete``: the association that delivered the last instance has been released, every
   required phase is present in at least one series, and no series of a required phase has a gap
   (``series_gaps``). With an empty ``required_phases`` every series is checked and at least one
   must exist.
2. ``quiet_period``: no instance arrived for ``quiet_period_s`` seconds.
3. ``max_wait``: ``max_wait_s`` seconds passed since the first instance, even though instances
   still trickle in. For a study reopened by instances sent after its analysis, the first instance
   of the new round (``node.spool``).

When none holds, ``next_check_at`` is the earliest moment rule 2 or 3 can become true
(``min(last_received + quiet_period_s, first_received + max_wait_s)``); rule 1 can only change on
a new instance or an association release, which the caller reacts to anyway.
A series whose instance numbers or slice positions are unknown "cannot be verified" and counts
as not complete, so such studies wait for the quiet period. Gaps at either end of a series
(missing first or last instances) cannot be seen from the received instances alone.
"""
from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from typing import Iterable

from pipeline.phases import Phase

log = logging.getLogger(__name__)

_DUPLICATE_STEP_MM = 1e-3


class ReadinessPolicyError(ValueError):
    """An invalid readiness policy value."""


@dataclass(frozen=True)
class SeriesSnapshot:
    series_instance_uid: str
    phase: Phase
    instance_numbers: tuple[int | None, ...]
    slice_positions: tuple[float | None, ...]  # mm along the slice normal; None when unknown


@dataclass(frozen=True)
class StudySnapshot:
    study_instance_uid: str
    first_received: float  # epoch seconds
    last_received: float
    last_association_released: bool
    series: tuple[SeriesSnapshot, ...]


@dataclass(frozen=True)
class ReadinessPolicy:
    quiet_period_s: float = 60.0
    max_wait_s: float = 1800.0
    required_phases: frozenset[Phase] = frozenset({Phase.AP, Phase.PVP})
    spacing_tolerance: float = 0.25  # a slice step > (1 + tolerance) x median step is a gap

    def __post_init__(self) -> None:
        for name in ("quiet_period_s", "max_wait_s"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                raise ReadinessPolicyError(f"{name}: must be a positive number of seconds")
        if not _finite(self.spacing_tolerance) or self.spacing_tolerance < 0:
            raise ReadinessPolicyError("spacing_tolerance: must be a number >= 0")
        phases = set()
        for p in self.required_phases:
            try:
                phase = Phase(p)
            except ValueError:
                raise ReadinessPolicyError(f"required_phases: unknown phase {p!r}") from None
            if phase is Phase.OTHER:
                raise ReadinessPolicyError("required_phases: OTHER cannot be required")
            phases.add(phase)
        object.__setattr__(self, "required_phases", frozenset(phases))


@dataclass(frozen=True)
class Readiness:
    ready: bool
    trigger: str | None  # "complete" | "quiet_period" | "max_wait"; None when not ready
    reason: str
    next_check_at: float | None  # epoch seconds to look again when not ready; None when ready


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _listed(values: Iterable[object], limit: int = 5) -> str:
    items = list(values)
    text = ", ".join(str(v) for v in items[:limit])
    return text + (", ..." if len(items) > limit else "")


def series_gaps(s: SeriesSnapshot, tolerance: float) -> str | None:
    """Why the series looks incomplete (gaps, duplicates, or unverifiable), or None when it looks whole."""
    n = len(s.instance_numbers)
    if n == 0:
        return "no instances"
    if len(s.slice_positions) != n:
        return "cannot verify: instance numbers and slice positions differ in count"
    if n == 1:
        return None
    missing_numbers = sum(v is None for v in s.instance_numbers)
    if missing_numbers:
        return f"cannot verify: {missing_numbers} of {n} instances have no instance number"
    numbers = sorted(v for v in s.instance_numbers if v is not None)
    duplicates = sorted({a for a, b in zip(numbers, numbers[1:]) if a == b})
    if duplicates:
        return f"duplicate instance numbers: {_listed(duplicates)}"
    if numbers[-1] - numbers[0] + 1 != n:
        present = set(numbers)
        absent = [i for i in range(numbers[0], numbers[-1] + 1) if i not in present]
        return (f"instance numbers {numbers[0]}..{numbers[-1]} have {len(absent)} missing: {_listed(absent)}")
    missing_positions = sum(v is None for v in s.slice_positions)
    if missing_positions:
        return f"cannot verify: {missing_positions} of {n} instances have no slice position"
    positions = sorted(float(v) for v in s.slice_positions if v is not None)
    steps = [b - a for a, b in zip(positions, positions[1:])]
    duplicate_positions = sum(step <= _DUPLICATE_STEP_MM for step in steps)
    if duplicate_positions:
        return f"{duplicate_positions} duplicate slice positions"
    median = statistics.median(steps)
    limit = (1 + tolerance) * median
    large = [step for step in steps if step > limit]
    if large:
        return (f"slice positions have {len(large)} gap(s): largest step {max(large):.2f} mm > "
                f"{1 + tolerance:g} x median step {median:.2f} mm")
    return None


def _completeness(snapshot: StudySnapshot, policy: ReadinessPolicy) -> tuple[bool, str]:
    problems: list[str] = []
    required = policy.required_phases
    checked = [s for s in snapshot.series if not required or s.phase in required]
    present = {s.phase for s in snapshot.series}
    missing = sorted(p.value for p in required - present)
    if not snapshot.series:
        problems.append("no series")
    if missing:
        problems.append(f"missing phases {', '.join(missing)}")
    for s in checked:
        gap = series_gaps(s, policy.spacing_tolerance)
        if gap is not None:
            problems.append(f"series {s.series_instance_uid} ({s.phase.value}): {gap}")
    if not snapshot.last_association_released:
        problems.append("last association still open")
    if problems:
        return False, "; ".join(problems)
    wanted = ", ".join(sorted(p.value for p in required)) or "(any)"
    return True, (f"last association released; required phases {wanted} present; "
                  f"{len(checked)} series checked without gaps")


def evaluate(snapshot: StudySnapshot, now: float, policy: ReadinessPolicy) -> Readiness:
    """Apply the rules in precedence order complete > quiet_period > max_wait (see module doc)."""
    complete, detail = _completeness(snapshot, policy)
    quiet = now - snapshot.last_received
    waited = now - snapshot.first_received
    if complete:
        result = Readiness(True, "complete", detail, None)
    elif quiet >= policy.quiet_period_s:
        result = Readiness(True, "quiet_period", f"no instance for {quiet:.1f} s (quiet period "
                           f"{policy.quiet_period_s:g} s); not complete: {detail}", None)
    elif waited >= policy.max_wait_s:
        result = Readiness(True, "max_wait", f"{waited:.1f} s since the first instance (max wait "
                           f"{policy.max_wait_s:g} s) while instances still arrive; not complete: {detail}", None)
    else:
        next_at = min(snapshot.last_received + policy.quiet_period_s, snapshot.first_received + policy.max_wait_s)
        result = Readiness(False, None, f"waiting ({next_at - now:.1f} s to next check): {detail}", next_at)
    log.debug("readiness study_uid=%s ready=%s trigger=%s", snapshot.study_instance_uid, result.ready,
              result.trigger)
    return result

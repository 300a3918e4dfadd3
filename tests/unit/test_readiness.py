"""Study readiness: series gaps, the three triggers, their precedence and the next check time (clock injected)."""
from __future__ import annotations

import pytest

from node.readiness import (
    Readiness,
    ReadinessPolicy,
    ReadinessPolicyError,
    SeriesSnapshot,
    StudySnapshot,
    evaluate,
    series_gaps,
)
from pipeline.phases import Phase

POLICY = ReadinessPolicy()  # quiet 60 s, max wait 1800 s, AP + PVP, tolerance 0.25
T0 = 1_700_000_000.0


def series(uid: str, phase: Phase, n: int = 10, *, step: float = 2.5,
           numbers: tuple[int | None, ...] | None = None,
           positions: tuple[float | None, ...] | None = None) -> SeriesSnapshot:
    return SeriesSnapshot(
        series_instance_uid=uid, phase=phase,
        instance_numbers=numbers if numbers is not None else tuple(range(1, n + 1)),
        slice_positions=positions if positions is not None else tuple(-100.0 + i * step for i in range(n)),
    )


def study(*s: SeriesSnapshot, first: float = T0, last: float = T0 + 30, released: bool = True) -> StudySnapshot:
    return StudySnapshot(study_instance_uid="1.2.3", first_received=first, last_received=last,
                         last_association_released=released, series=tuple(s))


AP, PVP = series("ap", Phase.AP), series("pv", Phase.PVP)


# --- series_gaps ----------------------------------------------------------------------------------------
def test_whole_series_has_no_gap() -> None:
    assert series_gaps(AP, 0.25) is None


def test_unsorted_arrival_order_is_fine() -> None:
    s = series("x", Phase.AP, numbers=(3, 1, 2, 4), positions=(5.0, 0.0, 2.5, 7.5))
    assert series_gaps(s, 0.25) is None


def test_single_instance_has_no_gap() -> None:
    assert series_gaps(series("x", Phase.AP, numbers=(7,), positions=(None,)), 0.25) is None


def test_instance_number_gap() -> None:
    s = series("x", Phase.AP, numbers=(1, 2, 3, 6, 7), positions=(0.0, 1.0, 2.0, 3.0, 4.0))
    assert series_gaps(s, 0.25) == "instance numbers 1..7 have 2 missing: 4, 5"


def test_duplicate_instance_numbers() -> None:
    s = series("x", Phase.AP, numbers=(1, 2, 2, 3), positions=(0.0, 1.0, 2.0, 3.0))
    assert series_gaps(s, 0.25) == "duplicate instance numbers: 2"


def test_missing_instance_number_cannot_verify() -> None:
    s = series("x", Phase.AP, numbers=(1, None, 3), positions=(0.0, 1.0, 2.0))
    assert series_gaps(s, 0.25).startswith("cannot verify")


def test_missing_slice_position_cannot_verify() -> None:
    s = series("x", Phase.AP, numbers=(1, 2, 3), positions=(0.0, None, 2.0))
    assert series_gaps(s, 0.25) == "cannot verify: 1 of 3 instances have no slice position"


def test_position_gap() -> None:
    positions = (0.0, 2.5, 5.0, 10.0, 12.5, 15.0)  # 7.5 missing, numbers renumbered without a hole
    s = series("x", Phase.PVP, numbers=tuple(range(1, 7)), positions=positions)
    reason = series_gaps(s, 0.25)
    assert reason is not None and "1 gap(s)" in reason and "5.00 mm" in reason and "median step 2.50 mm" in reason


def test_position_jitter_within_tolerance() -> None:
    positions = (0.0, 2.5, 5.0, 8.1, 10.6, 13.1)  # one step of 3.1 mm <= 1.25 x 2.5 mm
    assert series_gaps(series("x", Phase.PVP, numbers=tuple(range(1, 7)), positions=positions), 0.25) is None
    assert series_gaps(series("x", Phase.PVP, numbers=tuple(range(1, 7)), positions=positions), 0.1) is not None


def test_duplicate_positions() -> None:
    s = series("x", Phase.AP, numbers=(1, 2, 3, 4), positions=(0.0, 2.5, 2.5, 5.0))
    assert series_gaps(s, 0.25) == "1 duplicate slice positions"


def test_empty_and_mismatched_series() -> None:
    assert series_gaps(series("x", Phase.AP, numbers=(), positions=()), 0.25) == "no instances"
    assert series_gaps(series("x", Phase.AP, numbers=(1, 2), positions=(0.0,)), 0.25).startswith("cannot verify")


# --- evaluate: triggers -----------------------------------------------------------------------------------
def test_complete_when_released_and_phases_whole() -> None:
    r = evaluate(study(AP, PVP), now=T0 + 31, policy=POLICY)
    assert r == Readiness(True, "complete", r.reason, None)
    assert "required phases AP, PVP present" in r.reason


def test_not_released_waits() -> None:
    r = evaluate(study(AP, PVP, released=False), now=T0 + 31, policy=POLICY)
    assert not r.ready and r.trigger is None
    assert "last association still open" in r.reason
    assert r.next_check_at == T0 + 30 + 60


def test_missing_phase_waits() -> None:
    r = evaluate(study(AP), now=T0 + 31, policy=POLICY)
    assert not r.ready and "missing phases PVP" in r.reason


def test_gap_in_required_phase_blocks_complete() -> None:
    holed = series("pv", Phase.PVP, numbers=(1, 2, 4), positions=(0.0, 2.5, 7.5))
    r = evaluate(study(AP, holed), now=T0 + 31, policy=POLICY)
    assert not r.ready and "series pv (PVP): instance numbers 1..4 have 1 missing: 3" in r.reason


def test_gap_in_other_phase_does_not_block() -> None:
    holed = series("scout", Phase.OTHER, numbers=(1, 5), positions=(None, None))
    assert evaluate(study(AP, PVP, holed), now=T0 + 31, policy=POLICY).trigger == "complete"


def test_unverifiable_required_series_waits_for_quiet_period() -> None:
    unknown = series("pv", Phase.PVP, numbers=(1, 2, 3), positions=(None, None, None))
    assert not evaluate(study(AP, unknown), now=T0 + 31, policy=POLICY).ready
    r = evaluate(study(AP, unknown), now=T0 + 90, policy=POLICY)
    assert r.trigger == "quiet_period" and "cannot verify" in r.reason


def test_quiet_period_trigger_at_the_boundary() -> None:
    snap = study(AP, released=False)
    assert not evaluate(snap, now=T0 + 89.9, policy=POLICY).ready
    r = evaluate(snap, now=T0 + 90, policy=POLICY)
    assert (r.ready, r.trigger, r.next_check_at) == (True, "quiet_period", None)
    assert "missing phases PVP" in r.reason


def test_max_wait_trigger_while_instances_trickle() -> None:
    snap = study(AP, first=T0, last=T0 + 1790, released=False)
    assert not evaluate(snap, now=T0 + 1799, policy=POLICY).ready
    r = evaluate(snap, now=T0 + 1800, policy=POLICY)
    assert (r.ready, r.trigger) == (True, "max_wait")


# --- precedence ----------------------------------------------------------------------------------------------
def test_complete_wins_over_quiet_and_max_wait() -> None:
    r = evaluate(study(AP, PVP, first=T0, last=T0 + 30), now=T0 + 5000, policy=POLICY)
    assert r.trigger == "complete"


def test_quiet_period_wins_over_max_wait() -> None:
    r = evaluate(study(AP, first=T0, last=T0 + 30, released=False), now=T0 + 5000, policy=POLICY)
    assert r.trigger == "quiet_period"


# --- next_check_at -----------------------------------------------------------------------------------------
def test_next_check_is_quiet_period_end() -> None:
    r = evaluate(study(AP, first=T0, last=T0 + 100, released=False), now=T0 + 110, policy=POLICY)
    assert r.next_check_at == T0 + 160


def test_next_check_is_max_wait_when_earlier() -> None:
    r = evaluate(study(AP, first=T0, last=T0 + 1780, released=False), now=T0 + 1785, policy=POLICY)
    assert r.next_check_at == T0 + 1800


def test_next_check_follows_policy() -> None:
    policy = ReadinessPolicy(quiet_period_s=5, max_wait_s=20)
    r = evaluate(study(first=T0, last=T0 + 2), now=T0 + 3, policy=policy)
    assert not r.ready and r.next_check_at == T0 + 7 and "no series" in r.reason


# --- policy -------------------------------------------------------------------------------------------------
def test_empty_required_phases_checks_every_series() -> None:
    policy = ReadinessPolicy(required_phases=frozenset())
    other = series("o", Phase.OTHER)
    assert evaluate(study(other), now=T0 + 31, policy=policy).trigger == "complete"
    holed = series("o", Phase.OTHER, numbers=(1, 3), positions=(0.0, 5.0))
    assert not evaluate(study(holed), now=T0 + 31, policy=policy).ready
    assert not evaluate(study(), now=T0 + 31, policy=policy).ready


def test_required_phases_accept_names() -> None:
    policy = ReadinessPolicy(required_phases=frozenset({"PVP"}))  # type: ignore[arg-type]
    assert policy.required_phases == frozenset({Phase.PVP})
    assert evaluate(study(PVP), now=T0 + 31, policy=policy).trigger == "complete"


@pytest.mark.parametrize(
    "kwargs",
    [{"quiet_period_s": 0}, {"max_wait_s": -1}, {"quiet_period_s": float("nan")}, {"spacing_tolerance": -0.1},
     {"required_phases": frozenset({"XX"})}, {"required_phases": frozenset({Phase.OTHER})}],
)
def test_policy_validation(kwargs: dict) -> None:
    with pytest.raises(ReadinessPolicyError):
        ReadinessPolicy(**kwargs)

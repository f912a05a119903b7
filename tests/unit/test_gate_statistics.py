"""The gate's statistics against published values and their defining properties. Nothing is emulated."""

from __future__ import annotations

import random

import pytest

from airflow_provider_mlpipe.gate_statistics import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    PairedCounts,
    Thresholds,
    clopper_pearson_interval,
    decide,
    mcnemar_exact_p,
    mcnemar_mid_p,
    paired_difference_interval,
    wilson_interval,
    z_value,
)


def test_mcnemar_exact_and_mid_p_match_the_published_example() -> None:
    """Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91, Table 1: airway hyper-responsiveness
    before/after stem cell transplantation in 21 children, discordant pairs 1 and 7. Published: exact
    conditional p = 0.070, mid-p = 0.039."""
    assert mcnemar_exact_p(1, 7) == pytest.approx(0.070, abs=5e-4)
    assert mcnemar_mid_p(1, 7) == pytest.approx(0.039, abs=5e-4)
    # Symmetric in the two discordant counts, 1 without discordance, never above 1.
    assert mcnemar_exact_p(7, 1) == mcnemar_exact_p(1, 7)
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(5, 5) == 1.0


def test_mcnemar_exact_p_on_ten_thousand_examples_is_finite_and_small_for_a_clear_gain() -> None:
    assert 0 < mcnemar_exact_p(400, 250) < 1e-8
    assert mcnemar_exact_p(260, 250) > 0.5


@pytest.mark.parametrize(
    ("successes", "n", "wilson", "exact"),
    [
        # Newcombe (1998), Stat Med 17:857, Table I, methods 3 (score) and 5 (exact), 95%.
        (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
        (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
        (0, 20, (0.0, 0.1611), (0.0, 0.1684)),
        (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
    ],
)
def test_single_proportion_intervals_match_newcombe_1998(
    successes: int, n: int, wilson: tuple[float, float], exact: tuple[float, float]
) -> None:
    w = wilson_interval(successes, n, 0.95)
    cp = clopper_pearson_interval(successes, n, 0.95)
    assert (w.low, w.high) == pytest.approx(wilson, abs=5e-5)
    assert (cp.low, cp.high) == pytest.approx(exact, abs=5e-5)


def test_interval_edge_cases() -> None:
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    everything = wilson_interval(50, 50)
    assert everything.high == 1.0 and everything.low < 1.0
    nothing = wilson_interval(0, 50)
    assert nothing.low == 0.0 and nothing.high > 0.0
    assert (wilson_interval(0, 0).low, wilson_interval(0, 0).high) == (0.0, 1.0)
    assert clopper_pearson_interval(50, 50).high == 1.0
    # A higher level is wider; more examples at the same rate are narrower.
    assert wilson_interval(80, 100, 0.99).low < wilson_interval(80, 100, 0.95).low
    assert wilson_interval(8000, 10000).low > wilson_interval(80, 100).low
    for bad in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="confidence level"):
            wilson_interval(1, 2, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


def test_paired_counts_from_per_example_correctness() -> None:
    candidate = [True, True, False, False, True]
    champion = [True, False, True, False, False]
    counts = PairedCounts.from_correctness(candidate, champion)
    assert counts.as_list() == [1, 2, 1, 1]
    assert counts.n == 5 and counts.candidate_correct == 3 and counts.champion_correct == 2
    assert counts.difference == pytest.approx(0.2)
    assert PairedCounts.from_list(counts.as_list()) == counts
    with pytest.raises(ValueError, match="one of each per example"):
        PairedCounts.from_correctness([True], [True, False])
    with pytest.raises(ValueError, match="integer >= 0"):
        PairedCounts(-1, 0, 0, 0)


def test_paired_interval_properties() -> None:
    """Newcombe's method 10: contains the estimate, negates when the models swap, narrows with n, and
    with positive correlation (the paired case) is narrower than the same margins taken as independent."""
    counts = PairedCounts(both=7000, candidate_only=400, champion_only=300, neither=2300)
    interval = paired_difference_interval(counts)
    assert interval.low < counts.difference < interval.high
    swapped = paired_difference_interval(PairedCounts(7000, 300, 400, 2300))
    assert swapped.low == pytest.approx(-interval.high) and swapped.high == pytest.approx(-interval.low)
    smaller = paired_difference_interval(PairedCounts(700, 40, 30, 230))
    assert smaller.high - smaller.low > interval.high - interval.low
    # Independent samples with these margins (phi = 0): Newcombe's square-and-add of the Wilson intervals.
    p1, p2 = counts.candidate_correct / counts.n, counts.champion_correct / counts.n
    w1, w2 = (
        wilson_interval(counts.candidate_correct, counts.n),
        wilson_interval(counts.champion_correct, counts.n),
    )
    independent_low = (p1 - p2) - ((p1 - w1.low) ** 2 + (w2.high - p2) ** 2) ** 0.5
    assert interval.low > independent_low
    # 0 discordant pairs: still an interval of some width around 0 (the data vouch only so far).
    agree = paired_difference_interval(PairedCounts(800, 0, 0, 200))
    assert agree.low < 0 < agree.high and agree.high - agree.low < 0.01
    assert (
        paired_difference_interval(PairedCounts()).low,
        paired_difference_interval(PairedCounts()).high,
    ) == (
        -1.0,
        1.0,
    )


def test_paired_interval_covers_the_true_difference_at_about_its_level() -> None:
    """Coverage by simulation with a fixed seed: the defining property of a 95% interval. Stable: the same
    seed gives the same count on every run."""
    rng = random.Random(20260101)
    cells = (0.70, 0.06, 0.04, 0.20)  # true difference 0.02
    covered = 0
    trials = 400
    for _ in range(trials):
        counts = [0, 0, 0, 0]
        for _ in range(500):
            counts[rng.choices(range(4), weights=cells)[0]] += 1
        interval = paired_difference_interval(PairedCounts(*counts))
        covered += interval.low <= 0.02 <= interval.high
    assert 0.92 <= covered / trials <= 0.99


def _classes(*pairs: list[int]) -> dict[int, PairedCounts]:
    return {i: PairedCounts.from_list(cells) for i, cells in enumerate(pairs)}


def test_first_model_applies_min_accuracy_to_the_lower_bound() -> None:
    # 870 of 1000: point estimate above 0.86, Wilson lower bound (0.848) below it.
    candidate = {0: (435, 500), 1: (435, 500)}
    decision = decide(candidate, Thresholds(min_accuracy=0.86))
    assert decision.verdict == FAIL
    assert "lower bound is below min_accuracy 0.8600" in decision.reasons[0]
    passed = decide(candidate, Thresholds(min_accuracy=0.84))
    assert passed.verdict == PASS and passed.difference_interval is None
    assert "no champion" in passed.reasons[0]


def test_clearly_better_candidate_passes() -> None:
    paired = _classes([700, 120, 30, 150], [700, 110, 40, 150])
    decision = decide(None, Thresholds(min_accuracy=0.5, max_regression=0.01), paired=paired)
    assert decision.verdict == PASS and decision.difference_interval is not None
    assert decision.difference_interval.low > 0
    assert decision.mcnemar_p is not None and decision.mcnemar_p < 1e-6
    assert decision.discordant == [230, 70]


def test_equal_within_noise_is_inconclusive_against_a_zero_margin() -> None:
    paired = _classes([700, 40, 38, 222], [690, 45, 44, 221])
    decision = decide(None, Thresholds(min_accuracy=0.5, max_regression=0.0), paired=paired)
    assert decision.verdict == INCONCLUSIVE
    assert "straddles -max_regression" in decision.reasons[0]
    # The same counts with a margin of 2 points: not worse by more than that, with confidence.
    assert decide(None, Thresholds(min_accuracy=0.5, max_regression=0.02), paired=paired).verdict == PASS


def test_clearly_worse_candidate_fails() -> None:
    paired = _classes([700, 20, 120, 160], [700, 30, 110, 160])
    decision = decide(None, Thresholds(min_accuracy=0.5, max_regression=0.01), paired=paired)
    assert decision.verdict == FAIL
    assert "worse by more than max_regression" in decision.reasons[0]


def test_a_class_below_its_floor_fails_naming_it_although_overall_accuracy_is_higher() -> None:
    names = ["t-shirt", "trouser", "shirt"]
    paired = _classes([80, 18, 0, 2], [85, 14, 0, 1], [20, 2, 30, 48])
    decision = decide(
        None,
        Thresholds(min_accuracy=0.5, max_regression=0.01, min_class_accuracy=0.4),
        paired=paired,
        class_names=names,
    )
    assert decision.difference is not None and decision.difference > 0
    assert decision.verdict == FAIL
    assert [c["name"] for c in decision.broken_classes] == ["shirt"]
    assert decision.broken_classes[0]["floor"] == "min_class_accuracy"
    assert any("class 2 (shirt)" in r and "min_class_accuracy" in r for r in decision.reasons)


def test_a_class_that_dropped_beyond_max_class_drop_fails() -> None:
    paired = _classes([80, 18, 0, 2], [85, 14, 0, 1], [20, 2, 30, 48])
    decision = decide(
        None, Thresholds(min_accuracy=0.5, max_regression=0.01, max_class_drop=0.1), paired=paired
    )
    assert decision.verdict == FAIL
    assert [(c["class"], c["floor"]) for c in decision.broken_classes] == [(2, "max_class_drop")]
    assert decision.broken_classes[0]["difference"] == pytest.approx(-0.28)


def test_a_class_straddling_its_floor_makes_the_verdict_inconclusive() -> None:
    paired = _classes([450, 30, 10, 10], [300, 20, 10, 170])
    decision = decide(
        None,
        Thresholds(min_accuracy=0.5, max_regression=0.05, min_class_accuracy=0.65),
        paired=paired,
    )
    assert decision.verdict == INCONCLUSIVE
    assert [c["class"] for c in decision.uncertain_classes] == [1]
    assert decision.broken_classes == []


def test_defaults_leave_the_class_floors_off_and_thresholds_are_checked() -> None:
    paired = _classes([100, 0, 0, 0], [0, 0, 0, 100])  # class 1 always wrong, for both models
    assert decide(None, Thresholds(min_accuracy=0.0, max_regression=1.0), paired=paired).verdict == PASS
    with pytest.raises(ValueError, match="min_class_accuracy"):
        Thresholds(min_accuracy=0.5, min_class_accuracy=1.5)
    with pytest.raises(ValueError, match="no scored examples"):
        decide({0: (0, 0)}, Thresholds(min_accuracy=0.5))


def test_decision_as_dict_is_small_json() -> None:
    import json

    paired = {i: PairedCounts(900, 40, 30, 30) for i in range(10)}
    decision = decide(None, Thresholds(min_accuracy=0.5), paired=paired).as_dict()
    assert len(json.dumps(decision)) < 4000
    assert decision["verdict"] == PASS and decision["difference_interval"][0] < decision["difference"]

"""The statistics of the accuracy gate: pure Python, no Airflow, no numpy.

A candidate and a champion scored on the same examples give paired outcomes: per example, which of the two
classified it correctly. Only four counts matter (`PairedCounts`), per class and overall, so the gate's
evidence stays a few integers however many examples were scored.

- **Difference of accuracies** (candidate - champion): Newcombe's hybrid score interval for paired
  proportions (Newcombe 1998, Stat Med 17:2635, method 10), recommended by Fagerland, Lydersen & Laake
  (2014, Stat Med 33:2850). Closed form and deterministic (no resampling, no seed); two models that agree
  on every example still get an interval of some width unless their accuracy is exactly 1/2.
- **McNemar's exact test** of equal accuracies (two-sided, conditional on the discordant pairs), reported
  beside the interval as evidence.
- **A single accuracy**: Wilson's score interval (the candidate against `min_accuracy`, a class against its
  floor); Clopper-Pearson's exact interval is here too, for callers that want the conservative one.

`decide` turns these into the gate's verdict, pass / fail / inconclusive, with every reason and the classes
that broke a floor (or may have).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"
VERDICTS = (PASS, FAIL, INCONCLUSIVE)


def _check_level(level: float) -> float:
    if not isinstance(level, int | float) or isinstance(level, bool) or not 0 < level < 1:
        raise ValueError(f"confidence level {level!r}: expected a number in (0, 1), e.g. 0.95")
    return float(level)


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"{successes} successes of {n} trials: expected 0 <= successes <= trials")


def z_value(level: float) -> float:
    """The two-sided standard normal quantile of `level` (1.959964 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + _check_level(level) / 2)


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval `[low, high]` at `level`."""

    low: float
    high: float
    level: float

    def as_list(self) -> list[float]:
        return [round(self.low, 6), round(self.high, 6)]

    def __str__(self) -> str:
        return f"[{self.low:.4f}, {self.high:.4f}] ({self.level:.0%})"


def wilson_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson's score interval for a binomial proportion; [0, 1] when nothing was observed."""
    _check_counts(successes, n)
    if n == 0:
        return Interval(0.0, 1.0, _check_level(level))
    z = z_value(level)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # The exact ends: rounding must not put 0/n above 0 or n/n below 1.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(low, high, level)


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n may be 10,000s)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def _bisect(function: Any, target: float, *, increasing: bool) -> float:
    low, high = 0.0, 1.0
    for _ in range(100):
        middle = (low + high) / 2
        if (function(middle) < target) == increasing:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def clopper_pearson_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """The exact (Clopper-Pearson) interval: each tail holds at most (1 - level) / 2."""
    _check_counts(successes, n)
    alpha = 1 - _check_level(level)
    if n == 0:
        return Interval(0.0, 1.0, level)
    # low: P(X >= successes | p) = alpha/2, i.e. 1 - cdf(successes - 1) grows with p.
    low = (
        0.0
        if successes == 0
        else _bisect(lambda p: 1 - _binomial_cdf(successes - 1, n, p), alpha / 2, increasing=True)
    )
    # high: P(X <= successes | p) = alpha/2, cdf falls as p grows.
    high = (
        1.0
        if successes == n
        else _bisect(lambda p: -_binomial_cdf(successes, n, p), -alpha / 2, increasing=True)
    )
    return Interval(low, high, level)


@dataclass(frozen=True)
class PairedCounts:
    """Paired outcomes of a candidate and a champion on the same examples."""

    both: int = 0  # both correct
    candidate_only: int = 0  # the candidate correct, the champion wrong
    champion_only: int = 0  # the champion correct, the candidate wrong
    neither: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"paired count {name}={value!r}: expected an integer >= 0")

    @classmethod
    def from_correctness(cls, candidate: Sequence[bool], champion: Sequence[bool]) -> PairedCounts:
        if len(candidate) != len(champion):
            raise ValueError(
                f"{len(candidate)} candidate outcomes and {len(champion)} champion outcomes: expected one "
                "of each per example"
            )
        cells = [0, 0, 0, 0]
        for mine, theirs in zip(candidate, champion, strict=True):
            cells[(0 if mine else 2) + (0 if theirs else 1)] += 1
        return cls(both=cells[0], candidate_only=cells[1], champion_only=cells[2], neither=cells[3])

    @classmethod
    def from_list(cls, cells: Sequence[int]) -> PairedCounts:
        """From the compact `[both, candidate_only, champion_only, neither]` the XCom carries."""
        if len(cells) != 4:
            raise ValueError(
                f"paired counts {list(cells)!r}: expected [both, candidate_only, champion_only, neither]"
            )
        return cls(*(int(c) for c in cells))

    def as_list(self) -> list[int]:
        return [self.both, self.candidate_only, self.champion_only, self.neither]

    def __add__(self, other: PairedCounts) -> PairedCounts:
        return PairedCounts(*(a + b for a, b in zip(self.as_list(), other.as_list(), strict=True)))

    @property
    def n(self) -> int:
        return self.both + self.candidate_only + self.champion_only + self.neither

    @property
    def candidate_correct(self) -> int:
        return self.both + self.candidate_only

    @property
    def champion_correct(self) -> int:
        return self.both + self.champion_only

    @property
    def difference(self) -> float:
        """Candidate accuracy minus champion accuracy (0 when nothing was scored)."""
        return (self.candidate_only - self.champion_only) / self.n if self.n else 0.0


def mcnemar_exact_p(candidate_only: int, champion_only: int) -> float:
    """Two-sided exact (conditional) McNemar p-value of equal accuracies: twice the smaller binomial tail
    of the discordant pairs under p = 1/2, capped at 1; 1 without discordant pairs."""
    discordant = candidate_only + champion_only
    if candidate_only < 0 or champion_only < 0:
        raise ValueError(f"discordant counts {candidate_only}, {champion_only}: expected integers >= 0")
    if discordant == 0:
        return 1.0
    smaller = min(candidate_only, champion_only)
    # Exact integers: comb() of 10,000s is a big int, no rounding until the one division.
    tail = sum(math.comb(discordant, i) for i in range(smaller + 1))
    return min(1.0, 2 * tail / 2**discordant)


def mcnemar_mid_p(candidate_only: int, champion_only: int) -> float:
    """The mid-p version (Fagerland et al. 2013): the exact p-value less the probability of the observed
    count."""
    discordant = candidate_only + champion_only
    if discordant == 0:
        return 1.0
    smaller = min(candidate_only, champion_only)
    point = math.comb(discordant, smaller) / 2**discordant
    if candidate_only == champion_only:
        return 1 - point / 2
    return mcnemar_exact_p(candidate_only, champion_only) - point


def paired_difference_interval(counts: PairedCounts, level: float = 0.95) -> Interval:
    """Newcombe's hybrid score interval (method 10) for candidate accuracy - champion accuracy."""
    _check_level(level)
    n = counts.n
    if n == 0:
        return Interval(-1.0, 1.0, level)
    a, b, c, d = counts.as_list()
    p1, p2 = counts.candidate_correct / n, counts.champion_correct / n
    w1, w2 = wilson_interval(a + b, n, level), wilson_interval(a + c, n, level)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins else 0.0
    low_1, up_1 = p1 - w1.low, w1.high - p1
    low_2, up_2 = p2 - w2.low, w2.high - p2
    delta = math.sqrt(max(0.0, low_1**2 - 2 * phi * low_1 * up_2 + up_2**2))
    epsilon = math.sqrt(max(0.0, up_1**2 - 2 * phi * up_1 * low_2 + low_2**2))
    theta = p1 - p2
    return Interval(max(-1.0, theta - delta), min(1.0, theta + epsilon), level)


@dataclass(frozen=True)
class Thresholds:
    """What the gate requires. Defaults: none of the per-class floors (0 and 1 are no-ops)."""

    min_accuracy: float
    max_regression: float = 0.0
    confidence: float = 0.95
    min_class_accuracy: float = 0.0
    max_class_drop: float = 1.0

    def __post_init__(self) -> None:
        for name in ("min_accuracy", "max_regression", "min_class_accuracy", "max_class_drop"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"{name}={value!r}: expected a number in [0, 1]")
        _check_level(self.confidence)


@dataclass
class Decision:
    """The gate's verdict and the evidence behind it (`as_dict` is the XCom)."""

    verdict: str
    reasons: list[str]
    accuracy: float
    accuracy_interval: Interval
    samples: int
    champion_accuracy: float | None = None
    difference: float | None = None
    difference_interval: Interval | None = None
    mcnemar_p: float | None = None
    discordant: list[int] | None = None  # [candidate_only, champion_only]
    broken_classes: list[dict[str, Any]] = field(default_factory=list)
    uncertain_classes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "accuracy": self.accuracy,
            "accuracy_interval": self.accuracy_interval.as_list(),
            "samples": self.samples,
            "confidence": self.accuracy_interval.level,
            "champion_accuracy": self.champion_accuracy,
            "difference": self.difference,
            "difference_interval": self.difference_interval.as_list() if self.difference_interval else None,
            "mcnemar_p": self.mcnemar_p,
            "discordant": self.discordant,
            "broken_classes": self.broken_classes,
            "uncertain_classes": self.uncertain_classes,
        }


def _class_label(index: int, names: Sequence[str] | None) -> str:
    return f"{index} ({names[index]})" if names is not None and index < len(names) else str(index)


def decide(
    candidate: Mapping[int, tuple[int, int]] | None,
    thresholds: Thresholds,
    *,
    paired: Mapping[int, PairedCounts] | None = None,
    class_names: Sequence[str] | None = None,
    champion_label: str = "the champion",
) -> Decision:
    """The gate's verdict on a candidate, alone (`candidate`: class -> (correct, examples)) or against a
    champion scored on the same examples (`paired`: class -> PairedCounts; `candidate` is then ignored).

    - fail: the candidate's accuracy interval lies below `min_accuracy` at its lower bound; or the
      difference to the champion is below `-max_regression` with confidence (its interval's upper end);
      or a class is below `min_class_accuracy`, or dropped more than `max_class_drop`, with confidence.
    - inconclusive: none of those, but an interval straddles its line (difference, or a class floor).
    - pass: every interval is on the right side of its line.
    """
    level = thresholds.confidence
    if paired is not None:
        per_class = {int(k): (v.candidate_correct, v.n) for k, v in paired.items()}
    elif candidate is not None:
        per_class = {int(k): (int(v[0]), int(v[1])) for k, v in candidate.items()}
    else:
        raise ValueError("decide() needs the candidate's per-class counts or the paired counts")
    correct = sum(c for c, _ in per_class.values())
    samples = sum(n for _, n in per_class.values())
    if samples == 0:
        raise ValueError("no scored examples: the gate cannot decide on nothing")
    accuracy = correct / samples
    acc_interval = wilson_interval(correct, samples, level)
    decision = Decision(
        verdict=PASS, reasons=[], accuracy=accuracy, accuracy_interval=acc_interval, samples=samples
    )
    failures: list[str] = []
    doubts: list[str] = []

    if acc_interval.low < thresholds.min_accuracy:
        failures.append(
            f"accuracy {accuracy:.4f} on {samples} examples, interval {acc_interval}: its lower bound is "
            f"below min_accuracy {thresholds.min_accuracy:.4f}"
        )

    if paired is not None:
        total = PairedCounts()
        for counts in paired.values():
            total = total + counts
        interval = paired_difference_interval(total, level)
        line = -thresholds.max_regression
        decision.champion_accuracy = total.champion_correct / total.n
        decision.difference = total.difference
        decision.difference_interval = interval
        decision.mcnemar_p = mcnemar_exact_p(total.candidate_only, total.champion_only)
        decision.discordant = [total.candidate_only, total.champion_only]
        described = (
            f"accuracy {accuracy:.4f} vs {decision.champion_accuracy:.4f} of {champion_label} on the same "
            f"{samples} examples: difference {total.difference:+.4f}, interval {interval}, McNemar exact "
            f"p={decision.mcnemar_p:.3g}"
        )
        if interval.high < line:
            failures.append(f"{described}: worse by more than max_regression {thresholds.max_regression:.4f}")
        elif interval.low < line:
            doubts.append(
                f"{described}: the interval straddles -max_regression ({line:+.4f}); the data cannot tell "
                "whether the candidate is worse by more than that"
            )
        else:
            decision.reasons.append(
                f"{described}: not worse by more than max_regression {thresholds.max_regression:.4f}"
            )
    else:
        decision.reasons.append(
            f"no champion to compare with: first model; accuracy {accuracy:.4f}, interval {acc_interval}, "
            f"lower bound against min_accuracy {thresholds.min_accuracy:.4f}"
        )

    for index in sorted(per_class):
        good, n = per_class[index]
        if n == 0:
            continue
        label = _class_label(index, class_names)
        class_interval = wilson_interval(good, n, level)
        entry = {
            "class": index,
            "name": class_names[index] if class_names is not None and index < len(class_names) else None,
            "accuracy": good / n,
            "interval": class_interval.as_list(),
            "examples": n,
        }
        floor = thresholds.min_class_accuracy
        if floor > 0 and class_interval.high < floor:
            decision.broken_classes.append({**entry, "floor": "min_class_accuracy"})
            failures.append(
                f"class {label}: accuracy {good / n:.4f} on {n} examples, interval {class_interval}, is below "
                f"min_class_accuracy {floor:.4f}"
            )
        elif floor > 0 and class_interval.low < floor:
            decision.uncertain_classes.append({**entry, "floor": "min_class_accuracy"})
            doubts.append(
                f"class {label}: accuracy {good / n:.4f}, interval {class_interval}, straddles "
                f"min_class_accuracy {floor:.4f}"
            )
        if paired is None or thresholds.max_class_drop >= 1:
            continue
        pair = paired[index]
        drop_interval = paired_difference_interval(pair, level)
        line = -thresholds.max_class_drop
        dropped = {
            **entry,
            "champion_accuracy": pair.champion_correct / n,
            "difference": pair.difference,
            "difference_interval": drop_interval.as_list(),
        }
        if drop_interval.high < line:
            decision.broken_classes.append({**dropped, "floor": "max_class_drop"})
            failures.append(
                f"class {label}: accuracy {good / n:.4f} vs {pair.champion_correct / n:.4f} of {champion_label}, "
                f"difference {pair.difference:+.4f}, interval {drop_interval}: dropped by more than "
                f"max_class_drop {thresholds.max_class_drop:.4f}"
            )
        elif drop_interval.low < line:
            decision.uncertain_classes.append({**dropped, "floor": "max_class_drop"})
            doubts.append(
                f"class {label}: difference {pair.difference:+.4f} to {champion_label}, interval "
                f"{drop_interval}, straddles -max_class_drop ({line:+.4f})"
            )

    if failures:
        decision.verdict = FAIL
        decision.reasons = failures + doubts + decision.reasons
    elif doubts:
        decision.verdict = INCONCLUSIVE
        decision.reasons = doubts + decision.reasons
    return decision

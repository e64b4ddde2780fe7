"""Comparing runs over several seeds: mean, spread, 95 % intervals, paired tests, plots.

A comparison runs every variant (a strategy, a partitioner, the centralized reference)
once per seed; seeds share data partitions and client samples across variants, so the
variants' results are paired by seed. ``comparison.md`` gives per variant the mean ±
standard deviation and the 95 % confidence interval (Student's t over the seeds) of the
final accuracy, the best accuracy and the rounds to the target, the mean wall time, and
a two-sided paired t-test of each variant's final accuracy against the best variant's;
``comparison.png`` the mean curve with its 95 % band; ``comparison.json`` every number.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl_app.kit.results import (
    RoundRecord,
    finite,
    summarize,
    write_json_atomically,
    write_text_atomically,
)
from fl_app.parts.plots import plot_curves

# A difference is called significant below this p-value (no multiple-comparison correction).
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class SeedRun:
    """One run of a variant: its seed, its round records, its wall time."""

    seed: int
    rounds: Sequence[RoundRecord]
    seconds: float


@dataclass(frozen=True)
class Estimate:
    """A quantity measured once per seed (NaN where a seed has no value)."""

    values: tuple[float, ...]

    @property
    def present(self) -> list[float]:
        return [v for v in self.values if math.isfinite(v)]

    @property
    def mean(self) -> float:
        return float(np.mean(self.present)) if self.present else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof 1; NaN for fewer than 2 values)."""
        return float(np.std(self.present, ddof=1)) if len(self.present) > 1 else math.nan

    @property
    def half_width(self) -> float:
        """Half the 95 % confidence interval of the mean (Student's t, n − 1 degrees)."""
        n = len(self.present)
        return t_quantile(n - 1) * self.std / math.sqrt(n) if n > 1 else math.nan

    def describe(self, scale: float = 1.0, digits: int = 2, interval: bool = True) -> str:
        """``mean`` for one value; ``mean ± std (low–high)`` for several (the interval
        left out when not ``interval``)."""
        if not self.present:
            return "not reached"
        mean = self.mean * scale
        text = f"{mean:.{digits}f}"
        if len(self.present) > 1:
            text += f" ± {self.std * scale:.{digits}f}"
            if interval:
                half = self.half_width * scale
                text += f" ({mean - half:.{digits}f}–{mean + half:.{digits}f})"
        if len(self.present) < len(self.values):
            text += f", {len(self.present)}/{len(self.values)} reached"
        return text


def t_quantile(degrees: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``degrees`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, degrees))


def paired_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test of ``a`` against ``b`` (same seeds, same order).

    Identical differences have no spread: p is 1 when they are all zero, else 0.
    """
    from scipy import stats

    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(differences)
    if n < 2:
        return math.nan
    spread = float(np.std(differences, ddof=1))
    mean = float(np.mean(differences))
    if spread == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (spread / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def rounds_to_target(rounds: Sequence[RoundRecord], target: float) -> int | None:
    """First round whose central accuracy reaches ``target`` (None if none does)."""
    return next(
        (
            r["round"]
            for r in rounds
            if finite(r.get("central_accuracy")) and r["central_accuracy"] >= target
        ),
        None,
    )


def _values(runs: Sequence[SeedRun], key: str) -> Estimate:
    values = [summarize(run.rounds)[key] for run in runs]
    return Estimate(tuple(math.nan if v is None else float(v) for v in values))


def measures(runs: Sequence[SeedRun], target: float) -> dict[str, Estimate]:
    """What the table reports of one variant, each over its seeds."""
    reached = [rounds_to_target(run.rounds, target) for run in runs]
    return {
        "final_accuracy": _values(runs, "final_accuracy"),
        "best_accuracy": _values(runs, "best_accuracy"),
        "rounds_to_target": Estimate(tuple(math.nan if r is None else float(r) for r in reached)),
        "final_loss": _values(runs, "final_loss"),
        "best_loss": _values(runs, "best_loss"),
        "seconds": Estimate(tuple(run.seconds for run in runs)),
        "epsilon": _values(runs, "epsilon"),  # part: dp
    }


def comparison_table(
    runs: Mapping[str, Sequence[SeedRun]], target: float, references: Collection[str] = ()
) -> str:
    """Markdown table of variants ``{name: [one SeedRun per seed]}``.

    Accuracy is in percent; with several seeds every cell is ``mean ± std (95 % CI)``
    (wall time: ``mean ± std``) and a last column tests each variant's final accuracy
    (final loss for regression) against the best variant's. ``references`` (the
    centralized row) are tested against the best but never are it.
    """
    stats = {name: measures(seed_runs, target) for name, seed_runs in runs.items()}
    regression = all(not s["final_accuracy"].present for s in stats.values())
    seeds = max(len(seed_runs) for seed_runs in runs.values())
    headline = "final_loss" if regression else "final_accuracy"
    if regression:
        columns = [("final loss", "final_loss", 1.0, 4), ("best loss", "best_loss", 1.0, 4)]
    else:
        columns = [
            ("final accuracy (%)", "final_accuracy", 100.0, 2),
            ("best accuracy (%)", "best_accuracy", 100.0, 2),
            (f"rounds to {target:.0%}", "rounds_to_target", 1.0, 1 if seeds > 1 else 0),
        ]
    if any(s["epsilon"].present for s in stats.values()):  # part: dp
        columns.append(("final ε", "epsilon", 1.0, 2))  # part: dp
    columns.append(("wall time (s)", "seconds", 1.0, 1))
    timing = len(columns) - 1  # the column without an interval
    header = ["run", *(title for title, *_ in columns)]
    if seeds > 1:
        header.append(f"{headline.replace('_', ' ')}: Δ vs best, paired t-test")
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    best = best_variant({k: v for k, v in stats.items() if k not in references} or stats, headline)
    for name, s in stats.items():
        cells = [name] + [
            s[key].describe(scale, digits, interval=i != timing)
            for i, (_, key, scale, digits) in enumerate(columns)
        ]
        if seeds > 1:
            cells.append(_versus(s[headline], stats[best][headline], name == best, regression))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if seeds > 1:
        text += (
            f"\n{seeds} seeds: mean ± standard deviation (95 % confidence interval, Student's "
            f"t). Δ is the mean paired difference to {best}; * marks p < {SIGNIFICANCE} "
            "(two-sided paired t-test over the seeds, which share data partitions and client "
            "samples; no correction for multiple comparisons).\n"
        )
    return text


def best_variant(stats: Mapping[str, Mapping[str, Estimate]], headline: str) -> str:
    """The variant with the best mean headline (highest accuracy, lowest loss)."""
    sign = -1.0 if headline == "final_loss" else 1.0
    return max(stats, key=lambda name: sign * np.nan_to_num(stats[name][headline].mean, nan=-1e18))


def _versus(mine: Estimate, best: Estimate, is_best: bool, regression: bool) -> str:
    if is_best:
        return "best"
    p = paired_p_value(mine.values, best.values)
    difference = mine.mean - best.mean
    text = f"{difference:+.4f}" if regression else f"{100 * difference:+.2f} pts"
    return f"{text}, p = {p:.3f}" + (" *" if p < SIGNIFICANCE else "")


def mean_curve(
    runs: Sequence[SeedRun], key: str
) -> tuple[list[tuple[int, float]], list[tuple[int, float, float]]]:
    """The mean of ``key`` per round over the seeds, and its 95 % band (none for one seed)."""
    per_round: dict[int, list[float]] = {}
    for run in runs:
        for record in run.rounds:
            if finite(record.get(key)):
                per_round.setdefault(record["round"], []).append(float(record[key]))
    curve, band = [], []
    for r, values in sorted(per_round.items()):
        estimate = Estimate(tuple(values))
        curve.append((r, estimate.mean))
        if len(values) > 1:
            band.append(
                (r, estimate.mean - estimate.half_width, estimate.mean + estimate.half_width)
            )
    return curve, band


def write_comparison(
    directory: Path,
    runs: Mapping[str, Sequence[SeedRun]],
    *,
    target: float,
    title: str,
    references: Collection[str] = (),
) -> tuple[Path, Path]:
    """``comparison.md`` (the table), ``comparison.png`` (mean central accuracy or loss per
    round, with its 95 % band over seeds) and ``comparison.json`` (every value)."""
    table = directory / "comparison.md"
    write_text_atomically(table, f"# {title}\n\n" + comparison_table(runs, target, references))
    key = (
        "central_accuracy"
        if any(
            finite(r.get("central_accuracy")) for s in runs.values() for x in s for r in x.rounds
        )
        else "central_loss"
    )
    curves = {name: mean_curve(seed_runs, key) for name, seed_runs in runs.items()}
    seeds = max(len(seed_runs) for seed_runs in runs.values())
    plot = directory / "comparison.png"
    plot_curves(
        {name: curve for name, (curve, _) in curves.items()},
        bands={name: band for name, (_, band) in curves.items()},
        ylabel=key.replace("central_", "central test ")
        + (f" (mean of {seeds} seeds, 95 % band)" if seeds > 1 else ""),
        title=title,
        path=plot,
    )
    payload: dict[str, Any] = {
        name: {"seeds": [run.seed for run in seed_runs]}
        | {
            k: [v if math.isfinite(v) else None for v in e.values]
            for k, e in measures(seed_runs, target).items()
        }
        for name, seed_runs in runs.items()
    }
    write_json_atomically(directory / "comparison.json", {"target": target, "runs": payload})
    return table, plot

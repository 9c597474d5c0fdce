"""Figures (what was measured, with every round kept) and targets (the issue's goals).

A figure's value is the median of its rounds unless the module says otherwise (ratios of
paired rounds, percentiles over all samples). Every planned figure appears in the output,
also when it was not selected, so the JSON always has the same keys.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from bench.stats import median


class Status(enum.StrEnum):
    MEASURED = "measured"
    SKIPPED = "skipped"  # not selected with --only
    FAILED = "failed"


@dataclass(frozen=True)
class FigureSpec:
    key: str
    unit: str
    what: str
    baseline: str = ""  # the same-run baseline(s) it is read against, for the table


@dataclass
class Figure:
    key: str
    unit: str
    what: str
    baseline: str = ""
    value: float | None = None
    rounds: list[float] = field(default_factory=list)
    status: Status = Status.SKIPPED
    note: str = ""

    def as_dict(self) -> dict:
        data = asdict(self)
        data["status"] = self.status.value
        return data


class Results:
    """All figures of a run, keyed by name, in the order the modules declared them."""

    def __init__(self, specs: Iterable[FigureSpec]) -> None:
        self.figures: dict[str, Figure] = {
            s.key: Figure(s.key, s.unit, s.what, s.baseline) for s in specs}

    def __getitem__(self, key: str) -> Figure:
        return self.figures[key]

    def value(self, key: str) -> float | None:
        figure = self.figures.get(key)
        return figure.value if figure is not None else None

    def measured(self, key: str, rounds: Sequence[float], value: float | None = None,
                 note: str = "") -> Figure:
        """Record a figure; its value is the median of `rounds` unless given."""
        figure = self.figures[key]
        figure.rounds = [round(r, 4) for r in rounds]
        figure.value = median(rounds) if value is None else value
        figure.status = Status.MEASURED if figure.value is not None else Status.FAILED
        figure.note = note
        return figure

    def failed(self, keys: Iterable[str], error: str) -> None:
        for key in keys:
            figure = self.figures[key]
            if figure.status != Status.MEASURED:
                figure.status, figure.note = Status.FAILED, error


@dataclass(frozen=True)
class Verdict:
    key: str
    text: str
    observed: str  # e.g. "6.3×" or "18 ms"; "" when not measured
    passed: bool | None  # None: not measured


@dataclass(frozen=True)
class Target:
    """A goal from the issue, printed next to the figure `key`."""

    key: str
    text: str
    check: Callable[[Results], tuple[str, bool | None]]

    def evaluate(self, results: Results) -> Verdict:
        observed, passed = self.check(results)
        return Verdict(self.key, self.text, observed, passed)


def ratio_at_least(key: str, baseline: str, factor: float) -> Target:
    """`key ≥ factor × baseline`, both measured in this run."""

    def check(results: Results) -> tuple[str, bool | None]:
        value, base = results.value(key), results.value(baseline)
        if value is None or not base:
            return "", None
        return f"{value / base:.2f}×", value / base >= factor

    return Target(key, f"≥ {factor:g} × {baseline}", check)


def at_most(key: str, limit: float, unit: str = "") -> Target:
    def check(results: Results) -> tuple[str, bool | None]:
        value = results.value(key)
        return ("", None) if value is None else (f"{value:.3g}{unit}", value <= limit)

    return Target(key, f"≤ {limit:g}{unit}", check)


def at_least(key: str, limit: float, unit: str = "") -> Target:
    def check(results: Results) -> tuple[str, bool | None]:
        value = results.value(key)
        return ("", None) if value is None else (f"{value:.3g}{unit}", value >= limit)

    return Target(key, f"≥ {limit:g}{unit}", check)

"""Figures and their summaries (median and range over repeats), shared by the scenarios and the report."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Figure:
    name: str
    values: list[float]
    """One value per repeat."""
    unit: str
    target: str = ""
    """e.g. ``<= 30``; empty: reported, no target."""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def met(self) -> bool | None:
        if not self.target or not self.values:
            return None
        op, _, bound = self.target.partition(" ")
        value = float(bound)
        return self.median <= value if op == "<=" else self.median >= value if op == ">=" else self.median < value

    def summary(self) -> str:
        if not self.values:
            return "n/a"
        if len(self.values) == 1:
            return f"{fmt(self.median)}"
        return f"{fmt(self.median)} ({fmt(min(self.values))} .. {fmt(max(self.values))})"


@dataclass
class ScenarioResult:
    name: str
    title: str
    command: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plot: dict[str, Any] = field(default_factory=dict)
    """Raw series for the plots."""
    repeats: int = 1

    def add(self, name: str, values: list[float], unit: str, target: str = "") -> Figure:
        fig = Figure(name, [float(v) for v in values], unit, target)
        self.figures.append(fig)
        return fig

    def print(self) -> None:
        print(f"\n== {self.name}: {self.title} ({self.repeats} repeat(s))", flush=True)
        for f in self.figures:
            verdict = {True: "  [target met]", False: "  [TARGET MISSED]", None: ""}[f.met]
            target = f"  target {f.target}" if f.target else ""
            print(f"  {f.name:55s} {f.summary():>28s} {f.unit}{target}{verdict}", flush=True)
        for note in self.notes:
            print(f"  note: {note}", flush=True)


def fmt(x: float) -> str:
    if x != x:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def percentiles(values: Any, ps: tuple[float, ...] = (50, 95, 99)) -> list[float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return [float("nan")] * len(ps)
    return [float(v) for v in np.percentile(arr, ps)]

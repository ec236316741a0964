"""The paper-ordering verdicts of ``ambient reproduce``: interval arithmetic and wording."""

from __future__ import annotations

import math

import pytest

from jobs.reproduce import BENCHMARKS, Claim, claim_cell, claims_markdown, diff_interval


def test_welch_interval_matches_the_textbook_case() -> None:
    d, lo, hi = diff_interval([0.5, 0.6, 0.7], [0.1, 0.2, 0.3])
    assert d == pytest.approx(0.4)
    # equal variances 0.01, n = 3 each: se = sqrt(2 * 0.01 / 3), df = 4, t = 2.776
    half = 2.7764451 * math.sqrt(0.02 / 3)
    assert lo == pytest.approx(0.4 - half, rel=1e-5) and hi == pytest.approx(0.4 + half, rel=1e-5)
    assert diff_interval([0.5], [0.1, 0.2])[1:] == (None, None)
    assert math.isnan(diff_interval([math.nan], [0.1])[0])


def test_claim_rules_better_vs_not_worse_and_lower_is_better() -> None:
    better = Claim("ambient", "co-training", "task", strict=True)
    same = Claim("ambient", "co-training", "task", strict=False)
    a, b = [0.50, 0.55, 0.60], [0.10, 0.12, 0.14]
    assert claim_cell(better, a, b, "success_rate").startswith("holds: +43.0 [")
    assert claim_cell(better, b, a, "success_rate").startswith("fails: -43.0")
    overlap = [0.12, 0.30, 0.05]
    assert claim_cell(better, overlap, b, "success_rate").startswith("fails")
    assert claim_cell(same, overlap, b, "success_rate").startswith("holds")
    # acceleration: lower is better, so a lower mean is in the row's favour
    smooth, rough = [10.0, 12.0, 11.0], [30.0, 28.0, 35.0]
    motion = Claim("ambient", "co-training", "motion", strict=True)
    assert claim_cell(motion, smooth, rough, "mean_sq_accel").startswith("holds: +20.0")
    assert "1 seed" in claim_cell(motion, [10.0], [30.0], "mean_sq_accel")


def test_maze_claims_cover_task_and_motion_levels() -> None:
    spec = BENCHMARKS["maze"]
    rows = spec["rows"]
    good = {"success_rate": [0.5, 0.55, 0.6], "mean_sq_accel": [10.0, 11.0, 12.0]}
    per_row = {r.label: {m: good.get(m, [0.2, 0.25, 0.3]) for m in spec["metrics"]} for r in rows}
    md = claims_markdown(spec, rows, per_row)
    assert "Task level" in md and "Motion level" in md
    assert "ambient not worse than co-training (paper 99.5 vs 99.4)" in md
    assert "ambient better than co-training (paper 31.0 vs 62.2)" in md
    for m in ("success_rate_v110", "success_rate_v120", "reach_rate"):
        assert m in md

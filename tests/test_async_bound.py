"""benchmarks/async_rollouts.py's bound: overlapped, an iteration takes max(G, U) instead of G + U."""

import sys

import pytest

sys.path.insert(0, "benchmarks")
from async_rollouts import overlap_bound, why_lines  # noqa: E402


def test_the_bound_is_the_longer_part_over_the_sum():
    assert overlap_bound(1.0, 1.0) == 0.5
    assert overlap_bound(70.0, 255.0) == pytest.approx(255 / 325)
    assert overlap_bound(1.0, 3.0) == 0.75  # the shorter part a third of the longer: exactly the target


def test_the_reasoning_names_the_cores_the_split_and_whether_the_target_is_reachable():
    rows = [{"algo": "SFPO", "lag": 0, "generate_s": 70.0, "update_s": 255.0},
            {"algo": "SFPO", "lag": 1, "generate_s": 70.0, "update_s": 255.0},
            {"algo": "GRPO", "lag": 0, "generate_s": 1.0, "update_s": 1.0}]
    lines = why_lines(rows, cores=2, load=2.2, threads=2)
    assert lines[0].startswith("2 cores, load average 2.2") and "time-sliced" in lines[0]
    assert len(lines) == 3  # one per algorithm, from its lag-0 arm
    assert "255.00/325.00 = 0.78" in lines[1] and "cannot reach 0.75" in lines[1] and "it is 0.27x" in lines[1]
    assert "= 0.50 of lag 0" in lines[2] and "can reach 0.75 only with a core each" in lines[2]
    assert "cores to spare" in why_lines(rows, cores=16, load=1.0, threads=2)[0]

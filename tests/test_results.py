"""Workers' results and their reductions (results.py), and the metrics row built from them."""

import dataclasses

import pytest

from sfpo_rllib.results import (
    DIAGNOSTIC_FIELDS,
    PASS_DIAGNOSTICS,
    LearnerResult,
    RunnerResult,
    combine,
    row_fields,
)


def test_learner_results_combine_by_their_declared_reductions():
    a = LearnerResult(num_tokens=10.0, entropy=5.0, reposition_distance=0.3, optimizer_steps=4, micro_batches=2,
                      real_tokens=30.0, computed_tokens=40.0, rollout_logp_diff=1.0, rollout_logp_diff_max=0.2,
                      diagnostics={"slow_clipfrac": 0.1, "fast_kl": 2.0})
    b = LearnerResult(num_tokens=30.0, entropy=3.0, reposition_distance=0.3, optimizer_steps=4, micro_batches=3,
                      real_tokens=50.0, computed_tokens=60.0, rollout_logp_diff=3.0, rollout_logp_diff_max=0.5,
                      diagnostics={"slow_clipfrac": 0.3})
    out = combine([a, b])
    assert out["num_tokens"] == 40.0 and out["micro_batches"] == 5 and out["real_tokens"] == 80.0  # SUM
    assert out["entropy"] == 8.0 / 40.0 and out["rollout_logp_diff"] == 4.0 / 40.0  # TOKEN_MEAN: sums / all tokens
    assert out["rollout_logp_diff_max"] == 0.5  # MAX
    assert out["reposition_distance"] == 0.3 and out["optimizer_steps"] == 4  # FIRST
    assert out["slow_clipfrac"] == pytest.approx(0.2)  # MEAN over learners
    assert out["fast_kl"] == 2.0  # the mean over the learners that report it
    assert out["fast_clipfrac"] is None and out["behaviour_weight_mean"] is None  # not computed: null
    assert set(out) - {"diagnostics"} >= set(row_fields(LearnerResult))


def test_a_field_one_worker_did_not_measure_is_null():
    a, b = LearnerResult(num_tokens=1.0, rollout_logp_diff=1.0), LearnerResult(num_tokens=1.0)
    assert combine([a, b])["rollout_logp_diff"] is None


def test_runner_results_join_records_and_take_the_slowest_runner():
    out = combine([RunnerResult(records=[1, 2], time_generate_s=3.0, time_verify_s=1.0, time_weight_sync_s=0.5),
                   RunnerResult(records=[3], time_generate_s=2.0, time_verify_s=4.0, time_weight_sync_s=0.1)])
    assert out == {"records": [1, 2, 3], "time_generate_s": 3.0, "time_verify_s": 4.0, "time_weight_sync_s": 0.5}
    assert row_fields(RunnerResult) == ("time_generate_s", "time_verify_s", "time_weight_sync_s")


def test_every_result_field_declares_a_known_reduction():
    for cls in (LearnerResult, RunnerResult):
        for f in dataclasses.fields(cls):
            assert f.metadata["reduce"] in {"sum", "max", "mean", "first", "token_mean", "concat"}, (cls, f.name)


def test_the_metrics_row_has_every_result_field_and_every_diagnostic_once():
    from sfpo_rllib.sfpo import METRIC_FIELDS

    assert len(METRIC_FIELDS) == len(set(METRIC_FIELDS))
    assert set(row_fields(LearnerResult)) <= set(METRIC_FIELDS)
    assert set(row_fields(RunnerResult)) <= set(METRIC_FIELDS)
    for name in ("clipfrac_dual", "tis_weight_mean"):  # computed in losses.py, once never logged
        assert name in PASS_DIAGNOSTICS and f"fast_{name}" in METRIC_FIELDS and f"slow_{name}" in METRIC_FIELDS
    assert set(DIAGNOSTIC_FIELDS) <= set(METRIC_FIELDS)
    assert "time_unix" in METRIC_FIELDS

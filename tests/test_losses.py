"""GRPO advantages, the clipped surrogate and its variants: pure functions, checked by hand."""

import numpy as np
import pytest
import torch

from sfpo_rllib.losses import (
    AGGREGATIONS,
    aggregate,
    clipped_surrogate,
    group_advantages,
    kl_penalty,
    register_aggregation,
    truncated_is_weights,
)


def test_group_with_equal_rewards_has_zero_advantage_and_no_nan():
    adv = group_advantages(np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]), group_size=4)
    assert np.all(adv == 0.0)
    assert not np.isnan(adv).any()


def test_group_advantages_are_normalised_within_each_group():
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4).reshape(2, 4)
    np.testing.assert_allclose(adv.mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(adv.std(axis=1), 1.0, atol=1e-4)
    assert adv[0, 0] > 0 > adv[0, 1] and adv[1, 0] < 0 < adv[1, 1]


def test_group_advantages_reject_ragged_groups():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(np.zeros(5), group_size=2)


def test_token_mean_over_shards_sums_to_the_whole():
    torch.manual_seed(0)
    values = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    n_tok, n_seq = float(mask.sum()), 6.0
    for mode in AGGREGATIONS:  # every aggregation keeps 0 vs 2 learners exact
        whole = aggregate(values, mask, mode=mode, num_tokens=n_tok, num_seqs=n_seq, norm=7.0)
        parts = sum(
            aggregate(values[i : i + 2], mask[i : i + 2], mode=mode, num_tokens=n_tok, num_seqs=n_seq, norm=7.0)
            for i in (0, 2, 4)
        )
        torch.testing.assert_close(whole, parts)
    expected = (values * mask).sum() / mask.sum()
    torch.testing.assert_close(aggregate(values, mask, mode="token-mean", num_tokens=n_tok, num_seqs=n_seq), expected)


def test_seq_mean_token_mean_weights_sequences_equally():
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    out = aggregate(values, mask, mode="seq-mean-token-mean", num_tokens=5.0, num_seqs=2.0)
    assert out.item() == pytest.approx((1.0 + 3.0) / 2)
    assert aggregate(values, mask, mode="token-mean", num_tokens=5.0, num_seqs=2.0).item() == pytest.approx(7.0 / 5)


def test_clipped_surrogate_matches_hand_computation():
    logp = torch.log(torch.tensor([[0.5, 0.9]]))
    old = torch.log(torch.tensor([[0.25, 0.9]]))  # ratios 2.0 and 1.0
    mask = torch.ones(1, 2)
    loss, stats = clipped_surrogate(
        logp, old, torch.tensor([1.0]), mask, clip_param=0.2, mode="token-mean", num_tokens=2.0, num_seqs=1.0
    )
    # positive advantage: min(ratio, clip(ratio)) -> 1.2 and 1.0; loss = -(1.2 + 1.0) / 2
    assert loss.item() == pytest.approx(-1.1)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    loss_neg, _ = clipped_surrogate(
        logp, old, torch.tensor([-1.0]), mask, clip_param=0.2, mode="token-mean", num_tokens=2.0, num_seqs=1.0
    )
    # negative advantage: max(-A*ratio, -A*clip) = max(2.0, 1.2) and 1.0 -> (2.0 + 1.0) / 2
    assert loss_neg.item() == pytest.approx(1.5)


def test_ratio_is_one_and_gradient_is_the_policy_gradient_at_theta0():
    logp = torch.log(torch.tensor([[0.3, 0.6]])).requires_grad_()
    loss, stats = clipped_surrogate(
        logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2), clip_param=0.2, mode="token-mean",
        num_tokens=2.0, num_seqs=1.0,
    )
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, -1.0]]))
    assert stats["approx_kl"].item() == pytest.approx(0.0)


def test_kl_penalty_is_zero_at_reference_and_positive_elsewhere():
    logp = torch.log(torch.tensor([0.2, 0.5]))
    assert torch.all(kl_penalty(logp, logp) == 0)
    assert torch.all(kl_penalty(logp, torch.log(torch.tensor([0.4, 0.1]))) > 0)


# ----- the variants users bring from other trainers ----------------------------------
VALUES = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", 7.0 / 5),  # Σ / tokens
        ("seq-mean-token-mean", (4.0 / 4 + 3.0 / 1) / 2),  # mean of per-sequence means
        ("seq-mean-token-sum-norm", 7.0 / (2 * 8)),  # Dr.GRPO: Σ / (sequences × constant 8)
        ("seq-mean-token-sum", 7.0 / 2),  # mean of per-sequence sums
        ("token-sum", 7.0),  # Σ
    ],
)
def test_each_aggregation_matches_hand_computation(mode, expected):
    out = aggregate(VALUES, MASK, mode=mode, num_tokens=5.0, num_seqs=2.0, norm=8.0)
    assert out.item() == pytest.approx(expected)


def test_unknown_aggregation_lists_the_valid_names_and_names_register_once():
    with pytest.raises(ValueError, match="Unknown loss aggregation .*'seq-sum'.*valid: token-mean, seq-mean-token-mean"):
        aggregate(VALUES, MASK, mode="seq-sum", num_tokens=5.0, num_seqs=2.0)
    with pytest.raises(ValueError, match="registered twice"):
        register_aggregation("token-mean")(lambda *a, **k: None)
    with pytest.raises(ValueError, match="Unknown KL estimator .*'k4'.*valid: k1, k2, k3"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")
    with pytest.raises(ValueError, match="Unknown advantage estimator .*'ppo'.*valid: grpo, rloo"):
        group_advantages(np.zeros(4), group_size=2, estimator="ppo")


def test_advantages_without_std_norm_and_rloo_match_hand_computation():
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    dr_grpo = group_advantages(rewards, group_size=4, std_norm=False)
    np.testing.assert_allclose(dr_grpo, [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    rloo = group_advantages(rewards, group_size=4, estimator="rloo", std_norm=False)
    np.testing.assert_allclose(rloo, [1.0, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0], rtol=1e-6)
    # The default is GRPO's formula, unchanged.
    groups = rewards.reshape(2, 4)
    old = ((groups - groups.mean(axis=1, keepdims=True)) / (groups.std(axis=1, keepdims=True) + 1e-6)).reshape(-1)
    assert np.array_equal(group_advantages(rewards, group_size=4), old.astype(np.float32))


def _surrogate(ratios, advantage, **kw):
    old = torch.log(torch.full((1, len(ratios)), 0.25))
    logp = old + torch.log(torch.tensor([ratios]))
    settings = dict(clip_param=0.2, mode="token-mean", num_tokens=float(len(ratios)), num_seqs=1.0)
    settings.update(kw)
    return clipped_surrogate(logp, old, torch.tensor([advantage]), torch.ones(1, len(ratios)), **settings)


def test_asymmetric_clip_matches_hand_computation():
    # ratios 2.0 and 0.5, clipped to [0.8, 1.28]
    loss, stats = _surrogate([2.0, 0.5], 1.0, clip_param_low=0.2, clip_param_high=0.28)
    assert loss.item() == pytest.approx(-(1.28 + 0.5) / 2)  # min(r, clip(r)) for A > 0
    loss, _ = _surrogate([2.0, 0.5], -1.0, clip_param_low=0.2, clip_param_high=0.28)
    assert loss.item() == pytest.approx((2.0 + 0.8) / 2)  # max(r, clip(r)) for A = -1
    assert stats["clipfrac"].item() == pytest.approx(1.0)
    _, stats = _surrogate([1.25, 0.9], 1.0, clip_param_low=0.2, clip_param_high=0.28)
    assert stats["clipfrac"].item() == pytest.approx(0.0)  # 1.25 is inside clip-higher's range


def test_defaults_are_bit_identical_to_symmetric_clip():
    a, _ = _surrogate([2.0, 0.5, 1.1], 0.7)
    b, _ = _surrogate([2.0, 0.5, 1.1], 0.7, clip_param_low=0.2, clip_param_high=0.2)
    assert torch.equal(a, b)


def test_dual_clip_bounds_the_loss_of_negative_advantages():
    # A = -1: plain clip gives max(r, clip(r)) = 5 and 2; dual clip caps at c = 3.
    loss, stats = _surrogate([5.0, 2.0], -1.0, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx((3.0 + 2.0) / 2)
    assert stats["clipfrac_dual"].item() == pytest.approx(0.5)
    # A > 0 is untouched: -(1.2 + 1.2) / 2
    loss, _ = _surrogate([5.0, 2.0], 1.0, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx(-1.2)


def test_truncated_importance_weights_scale_each_tokens_loss():
    old = torch.log(torch.tensor([[0.5, 0.2]]))
    rollout = torch.log(torch.tensor([[0.25, 0.4]]))  # π_old / π_rollout = 2.0 and 0.5
    weights = truncated_is_weights(old, rollout, cap=1.5)
    torch.testing.assert_close(weights, torch.tensor([[1.5, 0.5]]))
    assert not weights.requires_grad
    logp = old.clone().requires_grad_()
    loss, stats = clipped_surrogate(logp, old, torch.tensor([1.0]), torch.ones(1, 2), clip_param=0.2, mode="token-mean",
                                    num_tokens=2.0, num_seqs=1.0, tis_weights=weights)
    assert loss.item() == pytest.approx(-(1.5 + 0.5) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.75, -0.25]]))  # -w · A / tokens
    assert stats["tis_weight_mean"].item() == pytest.approx(1.0)


def test_kl_estimators_match_hand_computation():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    log2 = float(np.log(2.0))
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(log2)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * log2**2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + log2 - 1.0)
    assert kl_penalty(logp, ref).item() == kl_penalty(logp, ref, "k3").item()
    for name in ("k1", "k2", "k3"):
        assert kl_penalty(logp, logp, name).item() == 0.0

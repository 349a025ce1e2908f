"""GRPO advantages and the clipped surrogate: pure functions, checked by hand."""

import numpy as np
import pytest
import torch

from sfpo_rllib.losses import aggregate, clipped_surrogate, group_advantages, kl_penalty


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
    for mode in ("token-mean", "seq-mean-token-mean"):
        whole = aggregate(values, mask, mode=mode, num_tokens=n_tok, num_seqs=n_seq)
        parts = sum(
            aggregate(values[i : i + 2], mask[i : i + 2], mode=mode, num_tokens=n_tok, num_seqs=n_seq) for i in (0, 2, 4)
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

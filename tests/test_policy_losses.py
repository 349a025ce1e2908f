"""The policy-loss registry: PPO (the default, unchanged), GSPO and CISPO against hand
computations and against verl's formulas, and validation that reads the registries live."""

import math

import pytest
import torch

from sfpo_rllib import losses
from sfpo_rllib.losses import (
    AGGREGATIONS,
    POLICY_LOSS_DIAGNOSTICS,
    POLICY_LOSSES,
    aggregate,
    cispo_surrogate,
    clipped_surrogate,
    gspo_surrogate,
    policy_loss,
)


def counts(mask):
    return {"num_tokens": float(mask.sum()), "num_seqs": float(mask.shape[0])}


# ----- verl's formulas, copied as reference ---------------------------------------------------
# volcengine/verl, verl/trainer/ppo/core_algos.py (commit b178a3cd, Jan 2026):
# compute_policy_loss_gspo, compute_policy_loss_cispo and agg_loss, with their ActorConfig
# reads (clip_ratio_low/high, global_batch_info) replaced by arguments and
# verl_F.masked_mean/masked_sum written out. Advantages there are per token: (B, T).
def _verl_agg_loss(loss_mat, loss_mask, loss_agg_mode):
    if loss_agg_mode == "token-mean":
        return (loss_mat * loss_mask).sum() / loss_mask.sum()
    assert loss_agg_mode == "seq-mean-token-mean"
    seq_mask = torch.sum(loss_mask, dim=-1)
    seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq_mask + 1e-8)
    seq_mask = (seq_mask > 0).float()
    return (seq_losses * seq_mask).sum() / seq_mask.sum()


def verl_gspo(old_log_prob, log_prob, advantages, response_mask, clip_ratio_low, clip_ratio_high):
    negative_approx_kl = log_prob - old_log_prob
    seq_lengths = torch.sum(response_mask, dim=-1).clamp(min=1)
    negative_approx_kl_seq = torch.sum(negative_approx_kl * response_mask, dim=-1) / seq_lengths
    log_seq_importance_ratio = log_prob - log_prob.detach() + negative_approx_kl_seq.detach().unsqueeze(-1)
    log_seq_importance_ratio = torch.clamp(log_seq_importance_ratio, max=10.0)
    seq_importance_ratio = torch.exp(log_seq_importance_ratio)
    pg_losses1 = -advantages * seq_importance_ratio
    pg_losses2 = -advantages * torch.clamp(seq_importance_ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    pg_losses = torch.maximum(pg_losses1, pg_losses2)
    return _verl_agg_loss(pg_losses, response_mask, "seq-mean-token-mean")


def verl_cispo(old_log_prob, log_prob, advantages, response_mask, clip_ratio_low, clip_ratio_high, loss_agg_mode):
    negative_approx_kl = log_prob - old_log_prob
    negative_approx_kl = torch.clamp(negative_approx_kl, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    clipped_ratio = torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    clipped_ratio_sg = clipped_ratio.detach()
    pg_losses = -clipped_ratio_sg * advantages * log_prob
    return _verl_agg_loss(pg_losses, response_mask, loss_agg_mode)


def random_batch(seed, b=6, t=9, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3 - 0.1
    logp = (old + spread * torch.randn(b, t, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    return logp, old, adv, mask


def value_and_grad(fn, logp):
    loss = fn(logp)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


# ----- the registry ---------------------------------------------------------------------------
def test_ppo_is_the_default_and_is_todays_clipped_surrogate():
    from sfpo_rllib.sfpo_config import SFPOConfig

    assert SFPOConfig().policy_loss == "ppo"
    assert policy_loss("ppo") is clipped_surrogate  # the same function: bit-identical by construction
    assert {"ppo", "gspo", "cispo"} <= set(POLICY_LOSSES)
    with pytest.raises(ValueError, match="valid: ppo, gspo, cispo"):
        policy_loss("grpo")


def test_every_diagnostic_a_policy_loss_computes_is_declared_and_every_declared_one_is_computed():
    """What a loss returns must be in POLICY_LOSS_DIAGNOSTICS (which the metrics row is built
    from); a declared name no loss computes would be a column that is always null."""
    logp, old, adv, mask = random_batch(0)
    computed = set()
    for name, fn in POLICY_LOSSES.items():
        options = {"tis_weights": torch.full_like(old, 0.9)}
        if fn.supports_dual_clip:
            options["clip_ratio_c"] = 3.0
        _, diagnostics = fn(logp, old, adv, mask, clip_param=0.2, mode="token-mean", **counts(mask), **options)
        assert set(diagnostics) <= set(POLICY_LOSS_DIAGNOSTICS), (name, set(diagnostics) - set(POLICY_LOSS_DIAGNOSTICS))
        assert {"clipfrac", "approx_kl", "tis_weight_mean"} <= set(diagnostics), name
        computed |= set(diagnostics)
    assert computed == set(POLICY_LOSS_DIAGNOSTICS)


# ----- GSPO -----------------------------------------------------------------------------------
def test_gspo_matches_hand_computation():
    """Sequence 1 (A = 1): token log-ratios 0.1, 0.3 -> s = e^0.2 = 1.2214 > 1.2: clipped to 1.2,
    loss −1.2 per token and no gradient. Sequence 2 (A = −1): log-ratios 0.05, −0.05 -> s = 1,
    loss 1 per token; d/dlogp_t of −A·s_t = s = 1, times 1/2 (token mean) times 1/2 (2 sequences)."""
    old = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], dtype=torch.float64)
    logp = (old + torch.tensor([[0.1, 0.3], [0.05, -0.05]], dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    loss, diagnostics = gspo_surrogate(logp, old, adv, mask, clip_param=0.2, mode="seq-mean-token-mean", **counts(mask))
    loss.backward()
    assert float(loss.detach()) == pytest.approx((-1.2 + 1.0) / 2)
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.25, 0.25])
    assert float(diagnostics["clipfrac"]) == pytest.approx(0.5)  # sequence 1's two tokens
    expected_kl = sum(math.exp(r) - 1 - r for r in (0.1, 0.3, 0.05, -0.05)) / 4
    assert float(diagnostics["approx_kl"]) == pytest.approx(expected_kl)


def test_gspo_clips_whole_sequences_where_ppo_clips_tokens():
    """One token far out, the sequence mean inside the range: PPO clips that token, GSPO none."""
    old = torch.zeros(1, 4, dtype=torch.float64)
    logp = torch.tensor([[0.5, -0.1, -0.1, -0.1]], dtype=torch.float64)  # mean 0.05: s = 1.05
    mask, adv = torch.ones(1, 4, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    _, ppo = clipped_surrogate(logp, old, adv, mask, clip_param=0.2, mode="token-mean", **counts(mask))
    _, gspo = gspo_surrogate(logp, old, adv, mask, clip_param=0.2, mode="token-mean", **counts(mask))
    assert float(ppo["clipfrac"]) == 0.25 and float(gspo["clipfrac"]) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("low,high", [(0.2, 0.2), (3e-4, 4e-4)])  # ours / the GSPO paper's range
def test_gspo_equals_verls_compute_policy_loss_gspo(seed, low, high):
    logp, old, adv, mask = random_batch(seed, spread=0.4 if low > 0.1 else 1e-3)
    ours = value_and_grad(lambda lp: gspo_surrogate(
        lp, old, adv, mask, clip_param=0.2, clip_param_low=low, clip_param_high=high,
        mode="seq-mean-token-mean", **counts(mask))[0], logp)
    verl = value_and_grad(lambda lp: verl_gspo(old, lp, adv[:, None].expand_as(old), mask, low, high), logp)
    torch.testing.assert_close(ours[0], verl[0], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(ours[1], verl[1], rtol=1e-7, atol=1e-9)


def test_gspo_token_gradient_is_gspos_sequence_gradient():
    """GSPO-token with per-sequence advantages = GSPO (the paper, §4.3): the gradient of the
    token form equals that of −A·clip(s_i) with s_i = exp(mean log-ratio) differentiated through."""
    logp, old, adv, mask = random_batch(5, spread=0.05)
    _, token_form = value_and_grad(lambda lp: gspo_surrogate(
        lp, old, adv, mask, clip_param=0.2, mode="seq-mean-token-mean", **counts(mask))[0], logp)

    def sequence_form(lp):
        s = torch.exp(((lp - old) * mask).sum(1) / mask.sum(1))
        per_seq = torch.maximum(-adv * s, -adv * torch.clamp(s, 0.8, 1.2))
        return per_seq.mean()

    _, seq_form = value_and_grad(sequence_form, logp)
    torch.testing.assert_close(token_form * mask, seq_form * mask, rtol=1e-9, atol=1e-12)


# ----- CISPO ----------------------------------------------------------------------------------
def test_cispo_matches_hand_computation():
    """Log-ratios 0.5 and 0 with A = 1, ε = 0.2: weights sg[clip(e^0.5)] = 1.2 and 1; loss per
    token −w·A·log π = 1.2·1.0 and 1·2.0, token mean 1.6; gradient −w·A / 2 tokens, clipped or not."""
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    old = logp.detach() - torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    adv, mask = torch.ones(1, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    loss, diagnostics = cispo_surrogate(logp, old, adv, mask, clip_param=0.2, mode="token-mean", **counts(mask))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(1.6)
    assert logp.grad.flatten().tolist() == pytest.approx([-0.6, -0.5])  # the clipped token keeps its gradient
    assert float(diagnostics["clipfrac"]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_cispo_equals_verls_compute_policy_loss_cispo(seed, mode):
    logp, old, adv, mask = random_batch(seed)
    ours = value_and_grad(lambda lp: cispo_surrogate(
        lp, old, adv, mask, clip_param=0.2, clip_param_high=0.28, mode=mode, **counts(mask))[0], logp)
    verl = value_and_grad(lambda lp: verl_cispo(old, lp, adv[:, None].expand_as(old), mask, 0.2, 0.28, mode), logp)
    torch.testing.assert_close(ours[0], verl[0], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(ours[1], verl[1], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ["gspo", "cispo"])
def test_losses_without_a_dual_clip_refuse_one(name):
    logp, old, adv, mask = random_batch(0)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        policy_loss(name)(logp, old, adv, mask, clip_param=0.2, mode="token-mean", clip_ratio_c=3.0, **counts(mask))


# ----- validation reads the registries live ---------------------------------------------------
def valid_config(**training):
    from sfpo_rllib.sfpo_config import SFPOConfig

    return (SFPOConfig().environment("sfpo/Arithmetic-v0")
            .training(group_size=4, train_batch_size_per_learner=16, minibatch_size=8, **training))


def test_validation_accepts_a_user_registered_aggregation_and_policy_loss(monkeypatch):
    monkeypatch.setitem(AGGREGATIONS, "my-agg", lambda masked, mask, **_: masked.sum())
    monkeypatch.setitem(POLICY_LOSSES, "my-loss", clipped_surrogate)
    valid_config(loss_agg="my-agg", policy_loss="my-loss").validate()
    assert float(aggregate(torch.ones(2, 2), torch.ones(2, 2), mode="my-agg", num_tokens=4, num_seqs=2)) == 4.0


@pytest.mark.parametrize("training,message", [
    ({"policy_loss": "grpo"}, "`policy_loss` ('grpo') must be one of ('ppo', 'gspo', 'cispo'"),
    ({"policy_loss": "gspo", "clip_ratio_c": 3.0}, "`clip_ratio_c` (3.0) is PPO's dual clip"),
])
def test_validation_refuses_bad_policy_loss_settings_with_one_line(training, message):
    with pytest.raises(ValueError) as err:
        valid_config(**training).validate()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_frozen_name_copies_are_gone():
    """Name lists come from their owners: no module-level copy that a registration would miss."""
    assert not hasattr(losses, "LOSS_AGGREGATIONS") and not hasattr(losses, "KL_ESTIMATOR_NAMES")

"""The `hf` engine's sampler against transformers' own warpers: the same distribution,
the removed tokens never drawn, and the log-prob the learner recomputes."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from sfpo_rllib.engines.hf import InverseCdfSampler

VOCAB, ROWS, DRAWS = 40, 3, 60_000


def warped_probs(scores, temperature, top_k, top_p):
    """What generate(do_sample=True) samples from: temperature, then top-k, then top-p."""
    s = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_k:
        s = TopKLogitsWarper(top_k)(None, s)
    if top_p < 1:
        s = TopPLogitsWarper(top_p)(None, s)
    return torch.softmax(s, dim=-1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.0, 8, 1.0),
                                                      (1.0, 0, 0.7), (1.3, 12, 0.9)])
def test_draws_follow_transformers_warped_distribution(temperature, top_k, top_p):
    torch.manual_seed(0)
    scores = torch.randn(ROWS, VOCAB) * 2.5
    expected = warped_probs(scores, temperature, top_k, top_p)
    sampler = InverseCdfSampler(temperature, top_k, top_p)
    one_hot = sampler(None, scores.repeat(DRAWS, 1))  # DRAWS copies of each row, in one step
    assert torch.isinf(one_hot).sum(-1).eq(VOCAB - 1).all()  # exactly one finite entry per row
    drawn = one_hot.argmax(-1).view(DRAWS, ROWS)
    counts = torch.stack([torch.bincount(drawn[:, r], minlength=VOCAB) for r in range(ROWS)]).double()
    assert not (counts[expected == 0] > 0).any()  # what top-k/top-p removes is never drawn
    mean = expected.double() * DRAWS
    # Within 5 standard deviations; + 3 draws where the expected count is near 0 (Poisson tail).
    assert ((counts - mean).abs() <= 5 * mean.sqrt() + 3).all()
    # The recorded log-prob: the whole vocabulary at the temperature, before truncation.
    full = torch.log_softmax(scores / temperature, dim=-1)
    recorded = sampler.logprobs().view(DRAWS, ROWS)
    assert torch.allclose(recorded, full.gather(-1, drawn.T).T, atol=1e-5)


def test_rare_tokens_keep_their_probability_and_negligible_ones_stay_out():
    scores = torch.full((1, VOCAB), -50.0)
    scores[0, 0] = 0.0
    scores[0, 1] = torch.log(torch.tensor(1e-4)).item()  # probability 1e-4
    sampler = InverseCdfSampler(1.0)
    drawn = sampler(None, scores.repeat(200_000, 1)).argmax(-1)
    hits = int((drawn == 1).sum())
    assert 20 - 5 * 20 ** 0.5 <= hits <= 20 + 5 * 20 ** 0.5  # expected 20 of 200,000
    assert int((drawn >= 2).sum()) == 0  # 2e-22 each: never in 200,000 draws


def test_same_seed_same_draws():
    scores = torch.randn(4, VOCAB)
    draws = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        draws.append(InverseCdfSampler(1.0)(None, scores.repeat(50, 1)).argmax(-1))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])

"""The policy module: log-probs and entropy of completion tokens, for Llama, Qwen2 and GPT-2."""

import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID

from random_models import VOCAB
from sfpo_envs import TextSpace
from sfpo_rllib.batch import pad_rows
from sfpo_rllib.causal_lm_module import CausalLMRLModule
from sfpo_rllib.columns import ATTENTION_MASK, COMPLETION_MASK, ENTROPY, INPUT_IDS, LOGP, Rollout
from sfpo_rllib.engines import SamplingParams
from sfpo_rllib.engines.hf import HFGenerateEngine

ROWS = [Rollout([5, 6, 7], [8, 9, 1]), Rollout([10], [11, 1]), Rollout([12, 13], [14, 15, 16, 17])]


def module_for(path, temperature=1.0):
    return CausalLMRLModule(
        observation_space=TextSpace(),
        action_space=TextSpace(),
        model_config={"model_path": path, "temperature": temperature},
    )


def as_tensors(cols):
    return {k: torch.from_numpy(v) for k, v in cols.items()}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_logp_matches_a_plain_forward_of_each_unpadded_row(random_model_factory, arch):
    module = module_for(random_model_factory(arch), temperature=0.7)
    out = module.forward_train(as_tensors(pad_rows(ROWS, pad_token_id=0)))
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in module.modules())
    for i, row in enumerate(ROWS):
        ids = torch.tensor([row.prompt_ids + row.completion_ids])
        logits = module.lm(input_ids=ids).logits[0, len(row.prompt_ids) - 1 : -1] / 0.7  # (C_i, V)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        expected = log_probs.gather(-1, torch.tensor(row.completion_ids).unsqueeze(-1)).squeeze(-1)
        n = len(row.completion_ids)
        torch.testing.assert_close(out[LOGP][i, :n], expected, rtol=1e-4, atol=1e-5)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        torch.testing.assert_close(out[ENTROPY][i, :n], entropy, rtol=1e-4, atol=1e-5)


def test_gradients_flow_through_logp_only(random_model_factory):
    module = module_for(random_model_factory("llama"))
    out = module.forward_train(as_tensors(pad_rows(ROWS, pad_token_id=0)))
    assert out[LOGP].requires_grad and not out[ENTROPY].requires_grad
    module.entropy_grad = True
    assert module.forward_train(as_tensors(pad_rows(ROWS, pad_token_id=0)))[ENTROPY].requires_grad


def test_state_round_trip_keeps_torch_tensors_and_bf16(random_model_factory):
    module = module_for(random_model_factory("qwen2"))
    module.to(torch.bfloat16)
    state = module.get_state()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert next(iter(state.values())).dtype == torch.bfloat16
    other = module_for(random_model_factory("qwen2")).to(torch.bfloat16)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other.set_state(state)
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), other.state_dict().values()))


def test_a_lora_weight_sync_moves_the_adapters_alone_and_gives_the_same_module(random_model_factory):
    settings = {"r": 4, "lora_alpha": 8.0, "target_modules": "all-linear", "lora_dropout": 0.0,
                "modules_to_save": None, "seed": 0}
    path = random_model_factory("llama")

    def lora_module():
        return CausalLMRLModule(observation_space=TextSpace(), action_space=TextSpace(),
                                model_config={"model_path": path, "lora": settings})

    learner, runner = lora_module(), lora_module()
    with torch.no_grad():
        for name, p in learner.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))  # "trained" adapters
    synced = learner.get_state(inference_only=True)
    trained = {k for k, p in learner.named_parameters() if p.requires_grad}
    assert set(synced) == trained and len(synced) < len(learner.state_dict())
    runner.set_state(synced)
    assert all(torch.equal(a, b) for a, b in zip(learner.state_dict().values(), runner.state_dict().values()))
    assert set(learner.get_state()) == set(learner.state_dict())  # checkpoints keep the whole module
    with pytest.raises(RuntimeError):  # any other partial state is an error, not a silent half-load
        runner.set_state(dict(list(synced.items())[:-1]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_samples_from_the_distribution_the_loss_uses(random_model_factory, arch):
    """Each appended token's recorded log-prob equals the learner's recompute (left padding
    included): generate took the token the sampler drew, from the model's own distribution."""
    module = module_for(random_model_factory(arch))
    engine = HFGenerateEngine(module.lm, pad_token_id=0, eos_token_id=1)
    prompts = [[5, 6, 7, 8], [9]]
    completions = engine.generate(prompts, n=3, params=SamplingParams(max_new_tokens=6), seed=0)
    assert len(completions) == 6
    for c in completions:
        assert 1 <= len(c) <= 6 and (c[-1] == 1 or len(c) == 6) and 1 not in c[:-1]
    rows = [Rollout(prompts[i // 3], list(c)) for i, c in enumerate(completions)]
    recomputed = module.forward_train(as_tensors(pad_rows(rows, pad_token_id=0)))[LOGP]
    for i, c in enumerate(completions):
        assert c.logprobs == pytest.approx(recomputed[i, : len(c)].tolist(), abs=2e-5)


def test_engine_is_reproducible_for_a_seed_and_varies_across_seeds(random_model_factory):
    module = module_for(random_model_factory("llama"))
    engine = HFGenerateEngine(module.lm, pad_token_id=0, eos_token_id=1)
    params = SamplingParams(max_new_tokens=8)
    a = engine.generate([[5, 6]], n=8, params=params, seed=1)
    assert a == engine.generate([[5, 6]], n=8, params=params, seed=1)
    assert a != engine.generate([[5, 6]], n=8, params=params, seed=2)
    assert all(0 <= t < VOCAB for c in a for t in c)


def test_engine_runs_each_prompt_prefix_once_per_group(random_model_factory):
    """G rows of a prompt share its keys and values: the body sees each distinct prompt's
    columns but the last once, then every row from the last prompt column on."""
    module = module_for(random_model_factory("llama"))
    seen = []
    hook = module.lm.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        engine = HFGenerateEngine(module.lm, pad_token_id=0, eos_token_id=1)
        engine.generate([[5, 6, 7, 8], [9, 10]], n=4, params=SamplingParams(max_new_tokens=3), seed=0)
    finally:
        hook.remove()
    assert seen[0] == (2, 3)  # two distinct prompts, 3 of their 4 (left-padded) columns
    assert seen[1] == (8, 1)  # generate continues every row from the last prompt column

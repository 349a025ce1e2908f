"""A real pretrained model end to end: smollm2-135m-instruct (Llama, 30 layers, vocabulary
49,152, a chat template), fetched once per test run (the ``smollm2`` fixture) and then
sampled, verified, trained through the CLI, exported and evaluated at tiny sizes.

What the embedded tiny model cannot show is checked here: the chat template around real
prompts, stopping at the real EOS token, math-verify on text a real model wrote, LoRA on
Llama's projection layers, and an export that loads in plain transformers and gives the
learner's log-probs.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sfpo_rllib import SFPOConfig
from sfpo_rllib.batch import pad_rows
from sfpo_rllib.causal_lm_module import completion_logp_and_entropy
from sfpo_rllib.cli import main
from sfpo_rllib.columns import ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS
from sfpo_rllib.model_cache import resolve_model

MODEL = "smollm2-135m-instruct"
REPO = Path(__file__).resolve().parent.parent
# Short questions this model answers in a few tokens (and so stops at its EOS) or rambles on.
PROBLEMS = [
    {"question": "What is 10 + 10? Put the final answer in \\boxed{}.", "answer": "20"},
    {"question": "What is 3 + 4? Put the final answer in \\boxed{}.", "answer": "7"},
]
ENV_CONFIG = {"data": PROBLEMS, "prompt_template": "plain"}
TEMPERATURE = 0.7
MAX_NEW_TOKENS = 24
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Learner recompute vs. generate's own log-probs, fp32: both run the same network, in a
# different order of operations (one full pass vs. a KV cache).
LOGP_TOLERANCE = 1e-4


def sample_config(**generation):
    return (
        SFPOConfig()
        .environment("sfpo/Math-v0", env_config=ENV_CONFIG)
        .training(group_size=4, train_batch_size_per_learner=8, minibatch_size=8)
        .generation(model_name_or_path=MODEL, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, **generation)
        .held_out_test(test_interval=0)
        .env_runners(num_env_runners=0)
        .debugging(seed=0)
    )


@pytest.fixture(scope="module")
def base_rollouts(smollm2):
    """One batch of real rollouts of the pretrained model: (runner, records)."""
    from sfpo_rllib.env_runner import SFPOEnvRunner

    config = sample_config()
    config.validate()
    runner = SFPOEnvRunner(config=config)
    try:
        yield runner, runner.sample(indices=[0, 1], seed=0).records
    finally:
        runner.stop()


def recomputed_logp(lm, records, temperature=TEMPERATURE):
    """The learner's log-probs of the records' completion tokens (as the loss computes them)."""
    cols = pad_rows(records, pad_token_id=2)
    with torch.no_grad():
        logp, _ = completion_logp_and_entropy(lm, torch.from_numpy(cols[INPUT_IDS]), torch.from_numpy(cols[ATTENTION_MASK]),
                                              cols[COMPLETION_MASK].shape[1], temperature)
    return [logp[i, : len(r.completion_ids)] for i, r in enumerate(records)]


def test_the_fetch_is_a_plain_hugging_face_folder_per_dtype(smollm2, capsys):
    from transformers import AutoConfig, AutoTokenizer

    record = json.loads((smollm2 / "fetch.json").read_text())
    assert record["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert record["float32_max_logit_diff"] == 0.0  # the saved fp32 weights are the GGUF's, exactly
    for dtype, torch_dtype in (("float32", "F32"), ("bfloat16", "BF16")):
        folder = resolve_model(MODEL, dtype)
        assert folder == str(smollm2 / dtype)
        raw = json.loads((smollm2 / dtype / "config.json").read_text())
        assert "quantization_config" not in raw  # else every later save_pretrained (the export) fails
        config = AutoConfig.from_pretrained(folder)
        assert (config.architectures, config.num_hidden_layers, config.hidden_size, config.vocab_size) == (
            ["LlamaForCausalLM"], 30, 576, 49152)
        assert config.tie_word_embeddings
        with safe_open(f"{folder}/model.safetensors", "pt") as weights:
            assert weights.get_slice("model.embed_tokens.weight").get_dtype() == torch_dtype
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template
    assert resolve_model(MODEL, "float16") == str(smollm2 / "float32")
    main(["models", "list"])
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(MODEL)]
    assert len(listed) == 1 and "float32,bfloat16" in listed[0] and str(smollm2) in listed[0]


def test_prompts_use_the_chat_template_and_completions_stop_at_eos(base_rollouts):
    runner, records = base_rollouts
    tokenizer, eos = runner.tokenizer, runner.eos_token_id
    assert eos == tokenizer.convert_tokens_to_ids("<|im_end|>")
    for record in records:
        messages = [{"role": "user", "content": PROBLEMS[record.prompt_index]["question"]}]
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert record.prompt_ids == list(expected)
        text = tokenizer.decode(record.prompt_ids)
        assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n"), text
        completion = record.completion_ids
        assert eos not in completion[:-1]  # cut right after the first EOS
        assert record.stopped == (completion[-1] == eos)
        assert record.stopped or len(completion) == MAX_NEW_TOKENS
        decoded = tokenizer.decode(completion, skip_special_tokens=True)
        assert "<|im_end|>" not in decoded and "<|im_start|>" not in decoded and decoded.strip()
    stopped = [r for r in records if r.stopped]
    assert stopped, [tokenizer.decode(r.completion_ids) for r in records]  # the model does end its answers
    assert any(len(r.completion_ids) < MAX_NEW_TOKENS for r in stopped)


def test_the_learner_recomputes_the_rollouts_log_probs(base_rollouts):
    runner, records = base_rollouts
    for record, logp in zip(records, recomputed_logp(runner.module.lm, records)):
        gap = (logp - torch.tensor(record.rollout_logp)).abs().max().item()
        assert gap < LOGP_TOLERANCE, gap
    # The check can fail: at another temperature the log-probs are far apart.
    other = recomputed_logp(runner.module.lm, records[:1], temperature=1.0)[0]
    assert (other - torch.tensor(records[0].rollout_logp)).abs().max().item() > 1e-2


def test_math_verify_scores_the_models_real_completions(base_rollouts):
    from sfpo_envs.math_verifier import check_answer

    runner, records = base_rollouts
    texts = [runner.tokenizer.decode(r.completion_ids, skip_special_tokens=True) for r in records]
    golds = [PROBLEMS[r.prompt_index]["answer"] for r in records]
    # The env's verdicts (worker processes, under a timeout) are math-verify's on the same text.
    for record, text, gold in zip(records, texts, golds):
        assert bool(record.verdict.correct) == check_answer(text, gold)[0], text
        if "boxed" not in text and "answer is" not in text.lower():
            assert not record.verdict.correct  # no stated answer: numbers in the text are not taken
    # The model's own text with a stated answer appended: right when it is the gold answer.
    unboxed = [re.sub(r"\\boxed\{([^{}]*)\}", r"\1", text) for text in texts]
    indices = [r.prompt_index for r in records]
    right = runner.train_task.score([f"{t}\n\nThe final answer is \\boxed{{{g}}}." for t, g in zip(unboxed, golds)], indices)
    wrong = runner.train_task.score([f"{t}\n\nThe final answer is \\boxed{{{int(g) + 1}}}." for t, g in zip(unboxed, golds)],
                                    indices)
    assert all(v.correct for v in right), [(t, v.info) for t, v in zip(unboxed, right)]
    assert not any(v.correct for v in wrong)


def test_lora_wraps_every_llama_projection_and_nothing_else(base_rollouts):
    from peft.tuners.lora import LoraLayer

    from sfpo_rllib.causal_lm_module import load_causal_lm
    from sfpo_rllib.lora import apply_lora, parameter_counts

    runner, _ = base_rollouts
    settings = sample_config().training(lora_rank=8).lora_settings()
    model = apply_lora(load_causal_lm(runner.model_path), settings)
    wrapped = [name for name, module in model.get_base_model().named_modules() if isinstance(module, LoraLayer)]
    assert sorted({name.rsplit(".", 1)[-1] for name in wrapped}) == sorted(LLAMA_LINEAR)
    assert len(wrapped) == 30 * len(LLAMA_LINEAR)  # lm_head (tied to the embedding) is not wrapped
    # r x (in + out) per layer: q, o 576+576; k, v 576+192; gate, up, down 576+1536.
    assert parameter_counts(model)["trainable"] == 30 * 8 * (2 * 1152 + 2 * 768 + 3 * 2112)


@pytest.fixture(scope="module")
def trained(smollm2, tmp_path_factory):
    """One SFPO iteration with LoRA through the CLI, at tiny sizes. The entropy bonus moves
    the adapters whatever the rewards (a 135M model often scores all-zero groups)."""
    out = tmp_path_factory.mktemp("smollm2_run") / "run"
    settings = {"model_name_or_path": MODEL, "env_config": ENV_CONFIG, "lora_rank": 8, "group_size": 2,
                "train_batch_size_per_learner": 4, "minibatch_size": 4, "max_new_tokens": 16, "temperature": TEMPERATURE,
                "fast_steps": 1, "lr": 1e-3, "entropy_coeff": 0.01, "test_interval": 0}
    main(["train", "--algo", "SFPO", "--env", "sfpo/Math-v0", "--config", json.dumps(settings), "--stop-iters", "1",
          "--seed", "0", "--output", str(out), "--num-cpus", "2", "--no-progress"])
    return out


def test_one_sfpo_iteration_through_the_cli_writes_its_outputs_and_exports(trained, smollm2):
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1] and rows[0]["rollouts"] == 4
    assert rows[0]["fast_grad_norm"] > 0 and rows[0]["time_update_s"] > 0
    assert (trained / "checkpoints" / "iteration_000001" / "rllib_checkpoint.json").is_file()
    assert "quantization_config" not in json.loads((trained / "final_model" / "config.json").read_text())
    adapter = json.loads((trained / "final_adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["base_model_name_or_path"] == str(smollm2 / "float32")
    with safe_open(str(trained / "final_adapter" / "adapter_model.safetensors"), "pt") as f:
        lora_b = [k for k in f.keys() if "lora_B" in k]
        assert sorted({k.split(".")[-3] for k in lora_b}) == sorted(LLAMA_LINEAR) and len(lora_b) == 210
        assert max(f.get_tensor(k).abs().max().item() for k in lora_b) > 0  # the adapters were trained
    # The merged model differs from the base exactly in the adapted projections.
    with safe_open(str(trained / "final_model" / "model.safetensors"), "pt") as new, \
            safe_open(str(smollm2 / "float32" / "model.safetensors"), "pt") as base:
        changed = {k for k in base.keys() if not torch.equal(new.get_tensor(k), base.get_tensor(k))}
    assert changed and {k.split(".")[-2] for k in changed} <= set(LLAMA_LINEAR), sorted(changed)[:5]


def test_the_exported_model_gives_the_learners_log_probs(trained, base_rollouts):
    """final_model/ in plain transformers vs. the trained policy as the learner computes it
    (the checkpoint's LoRA module, adapters unmerged), on the base model's real rollouts."""
    from transformers import AutoModelForCausalLM

    from sfpo_rllib.env_runner import SFPOEnvRunner
    from sfpo_rllib.evaluate import load_checkpoint_policy
    from sfpo_rllib.rllib_compat import checkpoint_config

    checkpoint = str(trained / "checkpoints" / "iteration_000001")
    config = checkpoint_config(checkpoint).copy(copy_frozen=False).env_runners(num_env_runners=0)
    policy = SFPOEnvRunner(config=config)
    try:
        load_checkpoint_policy(policy, checkpoint)
        _, records = base_rollouts
        learner = recomputed_logp(policy.module.lm, records)
        base = recomputed_logp(base_rollouts[0].module.lm, records)
    finally:
        policy.stop()
    exported = recomputed_logp(AutoModelForCausalLM.from_pretrained(trained / "final_model"), records)
    gaps = [(a - b).abs().max().item() for a, b in zip(learner, exported)]
    assert max(gaps) < LOGP_TOLERANCE, gaps
    assert max((a - b).abs().max().item() for a, b in zip(base, exported)) > 10 * LOGP_TOLERANCE  # training moved it


def test_evaluate_runs_on_the_model_by_name(smollm2, tmp_path):
    out = tmp_path / "eval"
    main(["evaluate", "--model", MODEL, "--env", "sfpo/Math-v0", "--env-config", json.dumps(ENV_CONFIG), "--n", "2",
          "--max-new-tokens", "24", "--temperature", str(TEMPERATURE), "--output", str(out), "--no-progress"])
    results = json.loads((out / "results.json").read_text())
    (model,) = results["models"]
    assert model["model"] == MODEL and results["protocol"]["n"] == 2
    (task,) = model["benchmarks"].values()
    assert task["problems"] == len(PROBLEMS) and 0.0 <= task["avg@2"] <= task["pass@2"] <= 1.0


def test_the_tuned_example_validates_and_its_prompts_fit(smollm2):
    """tuned_examples/smollm2_sfpo_lora.py: a valid config on the fetched model, >= 200 held-out
    problems disjoint from training, and the chat-formatted prompts as short as its docstring says."""
    import runpy

    from transformers import AutoTokenizer

    from sfpo_rllib.env_factory import make_env

    example = runpy.run_path(str(REPO / "tuned_examples" / "smollm2_sfpo_lora.py"))
    config = example["config"]
    config.validate()
    test_env = make_env(config.env, {**config.env_config, **config.test_env_config})
    train_env = make_env(config.env, config.env_config)
    held_out = {test_env.unwrapped.prompt(i) for i in range(config.test_num_problems)}
    assert len(held_out) == config.test_num_problems >= 200
    assert not held_out & {train_env.unwrapped.prompt(i) for i in range(2000)}
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL, "float32"))
    lengths = [len(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"]) for p in list(held_out)[:20]]
    assert 40 <= min(lengths) and max(lengths) <= 50  # the system prompt is in; the docstring's "about 45"


def test_the_gpu_recipe_validates_on_its_data(smollm2, tmp_path, monkeypatch):
    """tuned_examples/smollm2_gsm8k_gpu.py (run on a GPU) is a valid config here: bf16 autocast,
    256 completions per iteration, GSM8K's layout read from $GSM8K_DIR."""
    import runpy

    from sfpo_rllib.env_factory import make_env

    row = {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
           "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}
    for name in ("gsm8k_train.jsonl", "gsm8k_test.jsonl"):
        (tmp_path / name).write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("GSM8K_DIR", str(tmp_path))
    config = runpy.run_path(str(REPO / "tuned_examples" / "smollm2_gsm8k_gpu.py"))["config"]
    config.validate()
    assert (config.mixed_precision, config.model_dtype, config.train_batch_size_per_learner) == ("bf16", "float32", 256)
    env = make_env(config.env, {**config.env_config, **config.test_env_config})
    env.reset(options={"index": 0})
    _, reward, *_ = env.step("So he has \\boxed{7}.")
    assert reward == 1.0
    env.close()


def test_the_real_model_benchmarks_rows_run(smollm2, monkeypatch):
    """benchmarks/real_model.py's learner, learner-vs-plain and generation rows, at a tiny size on
    the fetched model: they drive the learner and the engine as the trainer does, so they break
    when those APIs move."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import real_model

    folder = resolve_model(MODEL, "float32")
    row = real_model.one_learner_row(folder, True, True, 512, 1, 16)  # LoRA, checkpointing, 8 rows <= 66 tokens
    assert row["micro_batches"] >= 2 and row["tokens"] > 0 and row["flops"] > 0 and 0 < row["padding_efficiency"] <= 1
    ratio = real_model.one_ratio_row(folder, 512, 1, 16, 1)
    assert ratio["learner"] > 0 and ratio["plain"] > 0 and ratio["tokens"] == row["tokens"]
    for engine in ("hf", "generate"):  # our engine and transformers' own sampling, 2 prompts x 3 x <= 5 tokens
        generation = real_model.one_generation_row(folder, engine, 2, 5, 3)
        assert generation["seconds"] > 0 and 6 <= generation["tokens"] <= 30, (engine, generation)


def test_the_decode_step_floor_multiplies_by_every_linear_weight_once(smollm2, monkeypatch):
    """The generation table's floor: every linear layer's weight (the tied output layer too) in
    one decoding step, QKV and gate-up concatenated as vLLM runs them; nothing lost or counted twice."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import real_model

    from sfpo_rllib.logprobs import load_causal_lm

    folder = resolve_model(MODEL, "float32")
    model = load_causal_lm(folder)
    weights = real_model.decode_step_matmuls(model)
    layers = model.config.num_hidden_layers
    assert len(weights) == 4 * layers + 1  # QKV, o, gate-up, down per layer; the output layer
    kv = model.config.num_key_value_heads * model.config.hidden_size // model.config.num_attention_heads
    assert weights[0].shape == (model.config.hidden_size + 2 * kv, model.config.hidden_size)
    assert weights[2].shape == (2 * model.config.intermediate_size, model.config.hidden_size)
    assert weights[-1].shape == (model.config.vocab_size, model.config.hidden_size)
    linear_numel = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert sum(w.numel() for w in weights) == linear_numel
    floor = real_model.one_matmul_floor_row(folder, 4, steps=2)
    assert floor["step_s"] > 0 and floor["flops"] == 2 * 4 * linear_numel


def test_the_allocator_benchmarks_rows_run(smollm2, monkeypatch):
    """benchmarks/allocator_settings.py's phases, at a tiny size on the fetched model."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import allocator_settings

    import sfpo_rllib.sfpo_torch_learner as learner_module

    # update_row puts its own setting in place of the learner's; put the learner's back afterwards.
    monkeypatch.setattr(learner_module, "malloc_for_update", learner_module.malloc_for_update)
    folder = resolve_model(MODEL, "float32")
    generation = allocator_settings.generation_row(folder, 32 * 2**20, 4, 8)
    assert generation["seconds"] > 0 and generation["rate"] > 0 and generation["peak_bytes"] > 2**20
    for shape in allocator_settings.UPDATE_SHAPES:
        update = allocator_settings.update_row(folder, 64 * 1024, shape, 1, 16)
        assert update["seconds"] > 0 and update["rate"] > 0 and update["peak_bytes"] > 2**20

"""The embedded default model ``sfpo-tiny-arithmetic``: a tiny character-level Llama, built offline.

Nothing is downloaded. On first use the model is built from scratch (about 2-3 minutes on one
CPU core) and cached; ``model_cache.resolve_model("sfpo-tiny-arithmetic")`` returns the cached
folder, which ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load like any other
checkpoint. This module is the recipe; ``model_cache.py`` the cache and the name resolver.

It is a *constructed* base model, made to resemble the paper's starting point (a model that is
partly right at temperature 1 and much more often right in one of k samples), so that RL has
something to sharpen. How it is made:

1. Tokenizer: one token per printable ASCII character (plus tab and newline), and ``<pad>``,
   ``<eos>``, ``<unk>``. No BOS is added and there is no chat template: prompts are plain text.
2. Model: ``LlamaForCausalLM``, hidden 128, 2 layers, 4 heads, MLP 512, untied embeddings
   (about 0.55M parameters: small enough that an RL update over 256 completions takes well
   under a second on CPU).
3. Warm start: a short supervised run (AdamW, cosine schedule) on worked solutions of
   ``sfpo/Arithmetic-v0`` train problems (``17+5-8=`` -> ``22-8=14<eos>``, loss on the
   completion only), 1400 steps of 64. Short: about half the held-out problems right at
   temperature 1, two thirds near greedy; far from converged.
4. Calibration: accuracy after a short run sits on a steep part of the learning curve, so the
   last step pins it. The final RMSNorm weight is multiplied by a scalar ``s``, which multiplies
   every logit by ``s`` (a sampling temperature 1/s folded into the weights). ``s`` is found by
   bisection so that temperature-1 accuracy on held-out *train-split* problems (kept out of
   the warm start) equals ``target_accuracy``. With ``s`` < 1 the model's errors are those of
   a better model sampled hot: mostly near-miss numbers, some stray characters. The test split
   is only measured, after the fact, for ``warm_start.json``.
5. Output gain: the final norm weight is then divided by ``output_gain`` (100) and the output
   matrix multiplied by it. The logits are unchanged, but Adam moves each weight by about lr
   per step whatever its size, so the sampling temperature, which otherwise barely moves at RL
   learning rates on a model this small, becomes a direction RL can take within minutes, as
   sharpening is in RL on large base models. Set ``output_gain=1`` to keep the plain layout.

The same settings, library versions and CPU give bit-identical weights: the build seeds torch
(restoring the caller's RNG state afterwards), reads the training problems in a fixed order
and runs on ``num_threads`` (default 1) torch threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

from sfpo_rllib.model_cache import TINY_MODEL_NAME

logger = logging.getLogger(__name__)

# Bump when the recipe changes in a way the settings do not show: it changes the cache key.
RECIPE_VERSION = 2

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
CHARACTERS = tuple(chr(i) for i in range(32, 127)) + ("\t", "\n")
MAX_POSITIONS = 512


@dataclasses.dataclass(frozen=True)
class TinyModelSettings:
    """Everything that decides the built weights (all of it goes into the cache key)."""

    seed: int = 0
    # Architecture.
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    # Task the warm start reads (the env's default difficulty).
    num_operands: int = 3
    max_operand: int = 20
    # Supervised warm start.
    steps: int = 1400
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    grad_clip: float = 1.0
    # Calibration: temperature-1 accuracy to pin on held-out train problems (None: no scaling).
    target_accuracy: float | None = 0.25
    calibration_problems: int = 1024
    # Final norm weight / output_gain, output matrix * output_gain: same logits (see _split_output_gain).
    output_gain: float = 100.0
    max_new_tokens: int = 16
    # After-the-fact measurement on the test split, recorded in warm_start.json (0: skip).
    eval_problems: int = 256
    eval_samples: int = 8
    # One thread: on 2 cores, 2 threads were ~20% faster when idle (same weights here), but two
    # such processes side by side oversubscribe the cores and slowed a build from 80 s to 12 min.
    num_threads: int = 1

    def validate(self) -> None:
        positive = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "steps", "batch_size",
                    "calibration_problems", "max_new_tokens", "eval_samples", "num_threads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` ({value!r}) must be an int >= 1; pass a positive integer.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"`hidden_size` ({self.hidden_size}) must be divisible by `num_heads` "
                             f"({self.num_heads}); pick e.g. num_heads=4.")
        if not isinstance(self.eval_problems, int) or self.eval_problems < 0:
            raise ValueError(f"`eval_problems` ({self.eval_problems!r}) must be an int >= 0; 0 skips the test measurement.")
        if not (isinstance(self.output_gain, (int, float)) and self.output_gain > 0):
            raise ValueError(f"`output_gain` ({self.output_gain!r}) must be a positive number; 1 leaves the output layer as trained.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"`lr` ({self.lr!r}) must be a positive number, e.g. 3e-3.")
        if self.target_accuracy is not None and not 0 < self.target_accuracy < 1:
            raise ValueError(f"`target_accuracy` ({self.target_accuracy!r}) must be in (0, 1), or None to skip "
                             "calibration; e.g. 0.25.")


def cache_key(settings: TinyModelSettings) -> str:
    """Short hash of the settings, the recipe version and the library versions."""
    import numpy
    import tokenizers
    import transformers

    payload = {
        "settings": dataclasses.asdict(settings),
        "recipe": RECIPE_VERSION,
        "versions": [torch.__version__, transformers.__version__, tokenizers.__version__, numpy.__version__],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ----- tokenizer ------------------------------------------------------------------------------
def build_tokenizer():
    """Character-level ``PreTrainedTokenizerFast``: every character is a token, decode fuses them back."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # "(?m)" is Oniguruma's dot-matches-newline: one piece per character, spaces included.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    backend.decoder = decoders.Fuse()  # join pieces with no separator
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,  # "1 , 2" must decode to itself
    )


# ----- model ----------------------------------------------------------------------------------
def _new_model(settings: TinyModelSettings, tokenizer):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    # Only the special ids and a length: no sampling defaults (top_k, temperature) to leak into callers.
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=32
    )
    return model


def _batch(tokenizer, problems: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``question + solution + eos`` ids, labels only on the completion (eos included)."""
    rows, labels = [], []
    for p in problems:
        prompt = tokenizer.encode(p["question"])
        completion = tokenizer.encode(p["solution"]) + [tokenizer.eos_token_id]
        rows.append(prompt + completion)
        labels.append([-100] * len(prompt) + completion)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels)):
        ids[i, : len(row)] = torch.tensor(row)
        targets[i, : len(label)] = torch.tensor(label)
    return ids, targets


def _calibration_problems(settings: TinyModelSettings) -> list[dict]:
    """Train-split problems held out of the warm start, so calibration sees unseen problems like the test split."""
    from sfpo_envs.arithmetic import generate_problems

    return generate_problems("train", settings.calibration_problems, num_operands=settings.num_operands,
                             max_operand=settings.max_operand, seed=settings.seed + 1)


def _training_problems(settings: TinyModelSettings, held_out: set[str]) -> list[dict]:
    from sfpo_envs.arithmetic import generate_problems

    needed = settings.steps * settings.batch_size
    drawn = generate_problems("train", needed + needed // 4, num_operands=settings.num_operands,
                              max_operand=settings.max_operand, seed=settings.seed)
    problems = [p for p in drawn if p["question"] not in held_out][:needed]
    if len(problems) < needed:
        raise ValueError(f"`calibration_problems` ({settings.calibration_problems}) holds out too much of the "
                         f"train split for `steps` x `batch_size` ({needed}) problems; lower `calibration_problems`.")
    return problems


def _warm_start(model, tokenizer, settings: TinyModelSettings, problems: list[dict]) -> float:
    """Supervised training on worked solutions, in the given order; returns the last loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def lr_factor(step: int) -> float:  # linear warmup, cosine decay to 0
        warm = min(1.0, (step + 1) / max(1, settings.warmup_steps))
        return warm * 0.5 * (1 + math.cos(math.pi * step / settings.steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    loss = torch.tensor(float("nan"))
    from tqdm import tqdm

    # A newcomer's first run waits on this loop: show it (stderr; off when not a terminal).
    bar = tqdm(range(settings.steps), desc="sfpo-tiny-arithmetic warm start", unit="step", leave=False,
               disable=None, file=sys.stderr)
    for step in bar:
        ids, labels = _batch(tokenizer, problems[step * settings.batch_size : (step + 1) * settings.batch_size])
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == settings.steps:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            logger.info("tiny model warm start: step %d/%d, loss %.3f", step + 1, settings.steps, loss.item())
    model.eval()
    return float(loss.item())


def sampled_accuracy(model, tokenizer, problems: list[dict], *, samples: int, max_new_tokens: int,
                     seed: int) -> tuple[float, float]:
    """(mean accuracy, pass@samples) at temperature 1, top_p 1, top_k 0, with the trainer's engine."""
    from sfpo_envs.arithmetic import extract_answer
    from sfpo_rllib.engines.base import SamplingParams
    from sfpo_rllib.engines.hf import HFGenerateEngine

    engine = HFGenerateEngine(model, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              max_batch_size=1024)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, top_k=0)
    completions = engine.generate([tokenizer.encode(p["question"]) for p in problems], samples, params, seed=seed)
    correct = torch.tensor([  # completions come grouped by problem
        extract_answer(tokenizer.decode(c, skip_special_tokens=True)) == problems[i // samples]["answer"]
        for i, c in enumerate(completions)
    ], dtype=torch.float32).view(len(problems), samples)
    return correct.mean().item(), correct.max(dim=1).values.mean().item()


@torch.no_grad()
def _calibrate(model, tokenizer, settings: TinyModelSettings, problems: list[dict]) -> dict:
    """Scale the logits (via the final norm weight) so temperature-1 accuracy hits the target.

    Bisection on log(scale) in [1/4, 4]; every probe samples with the same seed, so accuracy
    moves smoothly with the scale. Returns the scale, the accuracy it gives, and the accuracy
    at scale 4 (near greedy: how much RL can gain by sharpening).
    """
    norm = model.model.norm.weight
    base = norm.detach().clone()

    def accuracy_at(scale: float) -> float:
        norm.copy_(base * scale)
        acc, _ = sampled_accuracy(model, tokenizer, problems, samples=1, max_new_tokens=settings.max_new_tokens,
                                  seed=settings.seed)
        logger.info("tiny model calibration: scale %.3f -> accuracy %.3f", scale, acc)
        return acc

    target = settings.target_accuracy
    lo, hi = math.log(0.25), math.log(4.0)
    sharpened = accuracy_at(math.exp(hi))
    if sharpened < target:
        raise RuntimeError(
            f"The warm start is too weak for `target_accuracy` ({target}): even with logits x4 the model "
            f"solves fewer than that share of train problems. Raise `steps` (now {settings.steps}) or "
            "lower `target_accuracy`."
        )
    for _ in range(8):  # about 1% precision on the scale
        mid = (lo + hi) / 2
        if accuracy_at(math.exp(mid)) < target:
            lo = mid
        else:
            hi = mid
    scale = math.exp((lo + hi) / 2)
    return {"logit_scale": scale, "calibration_accuracy": accuracy_at(scale), "accuracy_at_logit_scale_4": sharpened}


@torch.no_grad()
def _split_output_gain(model, gain: float) -> None:
    """Divide the final norm weight by ``gain`` and multiply the output matrix by it.

    The logits do not change. But Adam moves each weight by about lr per step whatever its
    size, so small norm weights let an optimizer change the sampling temperature ``gain``
    times faster: with gain 1 this model's temperature barely moves at RL learning rates.
    """
    model.model.norm.weight.div_(gain)
    model.lm_head.weight.mul_(gain)


@contextlib.contextmanager
def _torch_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_tiny_model(output_dir: str | os.PathLike, *, seed: int = 0, **settings) -> Path:
    """Build, warm-start, calibrate and save the tiny model (and tokenizer) to ``output_dir``.

    ``settings`` override fields of ``TinyModelSettings`` (e.g. ``steps=5`` for a smoke build).
    Also writes ``warm_start.json``: the settings, the calibration scale and measured accuracies.
    """
    fields = {f.name for f in dataclasses.fields(TinyModelSettings)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(f"Unknown tiny-model setting(s) {unknown}; the settings are {sorted(fields)}.")
    config = TinyModelSettings(seed=seed, **settings)
    config.validate()
    from sfpo_envs.arithmetic import generate_problems

    output_dir = Path(output_dir)
    started = time.perf_counter()
    with _torch_threads(config.num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        tokenizer = build_tokenizer()
        model = _new_model(config, tokenizer)
        logger.info("tiny model: building %s (%d parameters) into %s", TINY_MODEL_NAME,
                    sum(p.numel() for p in model.parameters()), output_dir)
        held_out = _calibration_problems(config)
        final_loss = _warm_start(model, tokenizer, config,
                                 _training_problems(config, {p["question"] for p in held_out}))
        calibration = {"logit_scale": 1.0}
        if config.target_accuracy is not None:
            calibration = _calibrate(model, tokenizer, config, held_out)
        _split_output_gain(model, config.output_gain)
        test_accuracy = test_pass_at_k = None
        if config.eval_problems:
            test = generate_problems("test", config.eval_problems, num_operands=config.num_operands,
                                     max_operand=config.max_operand, seed=config.seed)
            test_accuracy, test_pass_at_k = sampled_accuracy(
                model, tokenizer, test, samples=config.eval_samples, max_new_tokens=config.max_new_tokens,
                seed=config.seed + 1)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    seconds = time.perf_counter() - started
    report = {
        "name": TINY_MODEL_NAME,
        "recipe_version": RECIPE_VERSION,
        "settings": dataclasses.asdict(config),
        "cache_key": cache_key(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_train_loss": final_loss,
        **calibration,
        "test_accuracy_t1": test_accuracy,
        f"test_pass_at_{config.eval_samples}": test_pass_at_k,
        "build_seconds": round(seconds, 1),
    }
    # Written last: its presence marks a complete build.
    (output_dir / "warm_start.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("tiny model: built in %.0f s, logit scale %.3f, test accuracy %s, pass@%d %s", seconds,
                calibration["logit_scale"],
                test_accuracy, config.eval_samples, test_pass_at_k)
    return output_dir

"""LoRA adapters through PEFT: what is trained, the KL anchor, and the merged export.

With ``lora_rank > 0`` the policy's causal LM is wrapped by ``peft.get_peft_model``: the
base weights are frozen and only the adapters (A, B of each targeted linear layer) have
``requires_grad``. Everything SFPO does to "the parameters" then covers the adapters
alone: the optimizer, the θ⁰ snapshot and the reposition θ̃ = θ⁰ + α(θᴷ − θ⁰).
Modules named in ``modules_to_save`` (PEFT's: a trained copy beside the frozen original)
join the adapters in all of that, in the KL anchor (off with them) and in the export.

The learners and the env runners build the same wrapped module from the same settings,
so a weight sync moves the adapters as they are and the ``hf`` engine samples from
exactly the network the loss differentiates. Engines that hold their own copy of the
weights (vLLM) get the merged weights W + (α/r)·B·A under Hugging Face names.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Mapping

import torch


def is_lora(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def apply_lora(model, settings: Mapping[str, Any] | None):
    """Wrap ``model`` with fresh LoRA adapters (``settings`` from ``SFPOConfig.lora_settings``).

    The adapters' random init (A; B starts at 0, so the wrapped model equals the base)
    is drawn from a generator seeded by the run seed, so every learner and runner builds
    identical adapters without touching the global RNG.
    """
    if not settings:
        return model
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=settings["r"],
        lora_alpha=settings["lora_alpha"],
        target_modules=settings["target_modules"],
        lora_dropout=settings["lora_dropout"],
        modules_to_save=settings.get("modules_to_save"),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # PEFT 0.21 reads transformers' old `is_gradient_checkpointing` name, and transformers 5
        # warns on every run; a notice between two libraries that no user can act on.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        torch.manual_seed(int(settings.get("seed", 0)))
        wrapped = get_peft_model(model, lora_config)
    _check_modules_to_save(wrapped, settings.get("modules_to_save"))
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5.x's name
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        # With frozen embeddings, checkpointed blocks would see inputs without grad.
        model.enable_input_require_grads()
    return wrapped


def _check_modules_to_save(wrapped, names) -> None:
    """Every name in ``modules_to_save`` must have matched a module: PEFT skips the others silently."""
    from peft.utils import ModulesToSaveWrapper

    wrapped_paths = [path for path, module in wrapped.get_base_model().named_modules()
                     if isinstance(module, ModulesToSaveWrapper)]
    missing = [n for n in names or () if not any(p.endswith(n) for p in wrapped_paths)]
    if missing:
        paths = sorted((p for p, _ in wrapped.get_base_model().named_modules()
                        if p.endswith(("norm", "lm_head", "embed_tokens"))), key=lambda p: (p.count("."), p))
        raise ValueError(f"`lora_modules_to_save` ({missing!r}) names no module of "
                         f"{type(wrapped.get_base_model()).__name__}: a name must end a module path, such as "
                         f"{paths[:6]!r}. Fix the names or drop them.")


class AdaptersDisabled:
    """A PEFT model as its base model, with the adapters switched off: the KL anchor.

    Shares every weight with the policy (no second copy). ``with anchor.base() as lm:``
    yields the model to run (under ``torch.no_grad()``) while the adapters are off.
    """

    def __init__(self, peft_model):
        self.peft_model = peft_model

    @contextlib.contextmanager
    def base(self):
        with self.peft_model.disable_adapter():
            yield self.peft_model


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """Hugging Face-named weights with the adapters merged in: W + (α/r)·B·A, and the
    trained copy of each module in ``modules_to_save`` in place of the original.

    Computed without touching ``model`` (``merge_and_unload`` would change it in place).
    For a model without adapters this is its plain state dict.
    """
    if not is_lora(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    base = model.get_base_model()
    deltas = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and not module.merged:
                for adapter in module.active_adapters:
                    delta = module.get_delta_weight(adapter)
                    key = f"{name}.weight"
                    deltas[key] = deltas[key] + delta if key in deltas else delta
        renames = {}  # a modules_to_save wrapper's prefix -> (prefix of the copy in use, HF prefix)
        for name, module in base.named_modules():
            if isinstance(module, ModulesToSaveWrapper):
                active = module.active_adapter
                in_use = ("original_module" if module.disable_adapters or active not in module.modules_to_save
                          else f"modules_to_save.{active}")
                renames[f"{name}."] = f"{name}.{in_use}."
        out = {}
        for key, value in base.state_dict().items():
            if ".lora_" in key:
                continue
            wrapper = next((w for w in renames if key.startswith(w)), None)
            if wrapper is not None:
                if not key.startswith(renames[wrapper]):
                    continue  # the copy not in use
                key = wrapper + key[len(renames[wrapper]):]
            key = key.replace(".base_layer.", ".")
            out[key] = (value + deltas[key].to(value.dtype)) if key in deltas else value
    return out


def save_final(weights: Mapping[str, torch.Tensor], config, model_dir: str, adapter_dir: str) -> None:
    """The trained policy as ``model_dir`` (merged, plain transformers) and ``adapter_dir`` (PEFT),
    each with the tokenizer. ``weights``: the module's ``lm`` weights under PEFT names."""
    from transformers import AutoTokenizer

    source = config.resolved_model_path()
    export(weights, source, config.lora_settings(), model_dir, adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    for path in (model_dir, adapter_dir):
        tokenizer.save_pretrained(path)


def export(weights: Mapping[str, torch.Tensor], source: str, settings, model_dir: str, adapter_dir: str) -> None:
    """Rebuild the wrapped model on the base at ``source``, load ``weights``, save adapter and merged model."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(source, dtype=weights[next(iter(weights))].dtype)
    model = apply_lora(base, settings)
    model.load_state_dict(dict(weights), strict=True)
    model.save_pretrained(adapter_dir)
    model.merge_and_unload().save_pretrained(model_dir)


def parameter_counts(model) -> dict[str, int]:
    """Trainable and total parameter counts (the θ⁰ snapshot holds the trainable ones)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}

"""FSDP2 for the policy: each learner holds 1/W of the parameters, gradients and optimizer state.

``fully_shard`` (torch.distributed.fsdp) turns every parameter into a ``DTensor`` sharded
on dim 0 over the learners. Each decoder layer is its own unit (all-gathered just before
its forward and backward, freed after); the policy module is the root unit holding the
embeddings, final norm and output layer. The root must be entered through ``__call__``
(``policy(batch)``), which is what all-gathers its parameters.

RLlib asks only the first learner for its state (checkpoints, weight sync to the env
runners), and gathering a sharded model is a collective every learner must join. So the
learner gathers the full model and optimizer state, on all learners at once, at the end
of every update (and after loading a state); the first learner keeps the full copy, on
CPU, for RLlib to read. Checkpoints and ``final_model/`` therefore hold the full model,
loadable by any number of learners or by ``from_pretrained``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.distributed as dist

_FULL = None  # StateDictOptions, imported lazily (distributed checkpoint is a heavy import)


def _options():
    global _FULL
    if _FULL is None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        _FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return _FULL


def _dtensor_class():
    """``DTensor``, or None while torch.distributed.tensor is not loaded (a heavy import, seconds
    at start-up, that only fsdp2 needs): no tensor can be a DTensor before it is."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def shard_policy(policy: torch.nn.Module) -> None:
    """Shard ``policy`` (a CausalLMRLModule) in place: one FSDP unit per decoder layer + the root."""
    from torch.distributed.fsdp import fully_shard

    lm = policy.lm
    layer_classes = set(getattr(lm, "_no_split_modules", None) or [])
    layers = [m for m in lm.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(
            f"learner_strategy='fsdp2': cannot find the decoder layers of {type(lm).__name__} (its "
            "`_no_split_modules` names none). Use learner_strategy='ddp' for this model."
        )
    for layer in layers:
        fully_shard(layer)
    fully_shard(policy)


def is_sharded(module: torch.nn.Module) -> bool:
    dtensor = _dtensor_class()
    return dtensor is not None and any(isinstance(p, dtensor) for p in module.parameters())


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This learner's shard of a DTensor (a view on its storage), or the tensor itself."""
    dtensor = _dtensor_class()
    return tensor.to_local() if dtensor is not None and isinstance(tensor, dtensor) else tensor


def sum_over_learners(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def max_over_learners(values: list[int]) -> list[int]:
    tensor = torch.tensor(values, dtype=torch.int64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def gather_full_state(policy: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, Any]:
    """Full (unsharded) model and optimizer state on the first learner, {} elsewhere. Collective.

    The optimizer state is None while the optimizer has not stepped yet: torch's
    ``get_optimizer_state_dict`` would otherwise initialise it by running ``step()`` on zero
    gradients, which counts as Adam's first step and changes its bias correction for every
    later one (the learners would no longer match a local or DDP learner)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = get_model_state_dict(policy, options=_options())
    optim = None
    if optimizer is not None and optimizer.state:  # the same on every learner: they step together
        optim = get_optimizer_state_dict(policy, optimizer, options=_options())
    return model, optim


def load_full_model_state(policy: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every learner takes its shard of a full model state. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(policy, state, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict | None) -> None:
    """Every learner takes its shard of a full optimizer state (None: one that never stepped). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if state is None:  # a fresh optimizer: no moments, no step count
        optimizer.state.clear()
        return

    set_optimizer_state_dict(policy, optimizer, state, options=StateDictOptions(full_state_dict=True))


@torch.no_grad()
def clip_grad_norm_(gradients: list[torch.Tensor | None], max_norm: float) -> torch.Tensor:
    """RLlib's global-norm clip (coefficient ``max_norm / max(norm + 1e-6, max_norm)``) over sharded
    gradients: the squared norms of the local shards are summed over learners."""
    grads = [g for g in gradients if g is not None]
    squares = torch.zeros((), dtype=torch.float64)
    for g in grads:
        squares += local(g).detach().double().pow(2).sum().cpu()
    total = sum_over_learners(squares).sqrt().float()
    coeff = torch.clamp(max_norm / torch.clamp(total + 1e-6, min=max_norm), max=1.0)
    for g in grads:
        local(g).mul_(coeff.to(local(g).device))
    return total

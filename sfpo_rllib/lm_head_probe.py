"""DGG's statistic: the lm_head weight's gradient norm, once per iteration (arXiv 2605.19425).

"When to Stop Reusing" finds that a surge in the lm_head weight change marks the onset of
the degradation that reusing a batch causes, and that the lm_head gradient norm lower-bounds
the policy divergence. ``reuse_gate="lm_head_grad"`` watches that norm.

What is measured, and when: the L2 norm of the gradient of the output-embedding weight
(``get_output_embeddings().weight``), before clipping, in the iteration's first optimizer
step. That step runs at θ⁰ on the first minibatch in GRPO, SFPO and GXPO alike (before any
reuse of the batch), so the statistic means the same thing in every arm, and a gated run
that has switched its fast stage off keeps measuring it.

* Tied embeddings: the output embedding *is* the input embedding's weight, so the norm is
  that shared weight's whole gradient (both of its uses), which is what the optimizer would
  apply to it.
* LoRA (the lm_head is frozen): the weight is given ``requires_grad`` for that one backward
  only, the gradient is read and dropped, and ``requires_grad`` is restored. The trained
  parameters' gradients are unchanged (a frozen weight's gradient is an extra product in the
  backward, not an input to the others), the optimizer never sees it, and it is not clipped
  with them. Under DDP this weight is not in the gradient all-reduce, so it is averaged over
  the learners here; under FSDP2 (a sharded weight) the shards' squares are summed.
  With fp16 loss scaling it is unscaled by the scaler's scale.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from sfpo_rllib.sharding import local


class LmHeadGradProbe:
    def __init__(self, lm) -> None:
        head = lm.get_output_embeddings()
        if head is None or getattr(head, "weight", None) is None:
            raise ValueError(
                "`reuse_gate` ('lm_head_grad') needs a model with an output embedding (lm_head) weight; "
                f"{type(lm).__name__} has none. Use reuse_gate='entropy'."
            )
        self.weight: torch.Tensor = head.weight
        self.frozen = not self.weight.requires_grad
        self.armed = False
        self.value: float | None = None

    def arm(self) -> None:
        """Measure in the next backward (the iteration's first optimizer step)."""
        self.armed = True
        self.value = None

    def before_backward(self) -> None:
        if self.frozen:
            self.weight.requires_grad_(True)

    @torch.no_grad()
    def read(self, scaler, *, num_learners: int) -> None:
        self.armed = False
        grad = self.weight.grad
        if grad is None:
            squared = torch.zeros((), dtype=torch.float64)
        else:
            shard = local(grad).double()
            if self.frozen and scaler is not None:
                shard = shard / scaler.get_scale()
            distributed = dist.is_available() and dist.is_initialized() and num_learners > 1
            if self.frozen and distributed and local(grad) is grad:
                # Replicated weight outside DDP's all-reduce: average the learners' gradients.
                shard = shard.clone()
                dist.all_reduce(shard, op=dist.ReduceOp.SUM)
                shard /= num_learners
            squared = shard.pow(2).sum().cpu()
            if distributed and local(grad) is not grad:
                squared = squared.to(grad.device)
                dist.all_reduce(squared, op=dist.ReduceOp.SUM)
                squared = squared.cpu()
        if self.frozen:
            self.weight.grad = None
            self.weight.requires_grad_(False)
        self.value = math.sqrt(float(squared))

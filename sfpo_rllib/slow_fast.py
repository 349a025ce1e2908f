"""θ⁰ and the reposition step, with one parameter snapshot reused in place.

The authors' code keeps two full parameter copies (slow and fast); one is enough:
snapshot θ⁰, let the optimizer walk the live parameters to θᴷ, then move the live
parameters back in place: θ̃ = θ⁰ + α (θᴷ − θ⁰). The snapshot's buffers are allocated
once and overwritten every iteration.

With sharded learners (FSDP2) the parameters are DTensors: the snapshot holds, and the
reposition moves, only this learner's local shard (the reposition is elementwise, so it
needs no communication); the distance sums the shards' squares over learners.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sfpo_rllib.sharding import local, sum_over_learners


class ParameterSnapshot:
    def __init__(self) -> None:
        self._theta0: list[torch.Tensor] | None = None

    @torch.no_grad()
    def take(self, params: Sequence[torch.Tensor]) -> None:
        """Store θ⁰ (copying into the existing buffers after the first call)."""
        if self._theta0 is None:
            self._theta0 = [local(p).detach().clone() for p in params]
        else:
            for saved, p in zip(self._theta0, params, strict=True):
                saved.copy_(local(p))

    @torch.no_grad()
    def distance(self, params: Sequence[torch.Tensor]) -> float:
        """‖θ − θ⁰‖₂ over all parameters (θᴷ − θ⁰ when called after the fast stage)."""
        total = torch.zeros((), dtype=torch.float64)
        for saved, p in zip(self._require(), params, strict=True):
            total += (local(p).detach().double() - saved.double()).pow(2).sum().cpu()
        if params and local(params[0]) is not params[0]:
            total = sum_over_learners(total)
        return float(total.sqrt())

    @torch.no_grad()
    def reposition(self, params: Sequence[torch.Tensor], alpha: float) -> None:
        """θ ← θ⁰ + α (θ − θ⁰), in place.

        Written as ``θ.lerp_(θ⁰, 1 − α)``: torch's lerp is exact at both ends, so α = 1
        leaves θᴷ bit-identical (K+1 plain passes) and α = 0 restores θ⁰ bit-identically.
        """
        for saved, p in zip(self._require(), params, strict=True):
            local(p).lerp_(saved, 1.0 - alpha)

    def saved(self) -> list[torch.Tensor]:
        """θ⁰'s local shards (read only; GXPO's extrapolation reads them)."""
        return self._require()

    def _require(self) -> list[torch.Tensor]:
        if self._theta0 is None:
            raise RuntimeError("ParameterSnapshot.take() must be called before the fast stage ends.")
        return self._theta0

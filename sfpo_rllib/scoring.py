"""Held-out scores from per-problem correct counts: avg@n and unbiased pass@k.

One implementation for the held-out test during training (``test_accuracy``,
``test_pass_at_k``) and for ``sfpo-rllib evaluate``. For n samples per problem and c correct:
  avg@n   mean over problems of c / n (the SFPO paper's "pass@1")
  pass@k  mean over problems of 1 - C(n-c, k) / C(n, k), the unbiased estimator of the
          chance that at least one of k samples is correct (Chen et al. 2021), k <= n.
"""

from __future__ import annotations

from math import comb
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct out of n samples (1 - C(n-c,k)/C(n,k))."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n."""
    return sorted({k for k in (2**i for i in range(n.bit_length())) if k <= n} | {n})


def score_counts(correct: Sequence[int], n: int) -> dict[str, float]:
    """avg@n and pass@k (k in ks_for(n)) over problems with these correct counts."""
    if not correct:
        raise ValueError("No problems were evaluated.")
    out = {f"avg@{n}": sum(correct) / (len(correct) * n)}
    for k in ks_for(n):
        out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in correct) / len(correct)
    return out


def held_out_scores(correct: Sequence[int], n: int) -> tuple[float, float]:
    """(avg@n, pass@n) of the held-out test: ``test_accuracy`` and ``test_pass_at_k``."""
    scores = score_counts(correct, n)
    return scores[f"avg@{n}"], scores[f"pass@{n}"]

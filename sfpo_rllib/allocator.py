"""Host memory for tensors: glibc's malloc set per phase, and huge pages for large tensors.

PyTorch's CPU tensors come from plain ``malloc``. glibc serves blocks below its mmap threshold
from its heaps, and raises that threshold (up to 32 MiB) each time a larger mmapped block is
freed. The two phases of an iteration want opposite settings:

* **An update** allocates activations of a few MiB, their sizes changing with every
  micro-batch. In the heaps they fragment and keep the freed pages resident: measured on
  SmolLM2-135M (LoRA rank 8, gradient checkpointing, one GRPO update over 5,260 tokens, fp32,
  2 cores), peak RSS 6.4 GiB with glibc's defaults. A threshold fixed at 2 MiB maps each
  block of 2 MiB or more on its own and unmaps it when freed: 1.96 GiB for that update.
  Smaller blocks (per-head projections, LoRA's rank-r activations) stay in the heaps: mapped
  fresh, each would be faulted in and zeroed page by page at every use, which made a short-row
  update (the SmolLM2 tuned example's batch, no checkpointing) 1.4x slower at 64 KiB.
* **Generation** allocates the same few sizes at every decoding step (the KV cache grown by
  one column, the logits). Mapped fresh, each is faulted in page by page at every step;
  from the heaps it is reused. Measured on the same model (64 rows x 96 new tokens, 2 threads):
  188 row-steps/s with a 32 MiB threshold, 125 with 64 KiB; peak RSS 1.60 and 1.52 GiB.

A fixed threshold also switches glibc's raising off, so each phase sets its own: learners
around every update (and their build), env runners around every generation, after which the
heaps' free pages are given back (``malloc_trim``).
When one process holds both (all local) and they overlap (``rollout_lag=1``), the update's
setting stays while any update runs: the learner's memory is the one that grows.

Blocks of 2 MiB and more are then fresh mappings. PyTorch's CPU allocator can ask the kernel
for 2 MiB transparent huge pages on them (``THP_MEM_ALLOC_ENABLE=1``, read once, when torch
first allocates): 512 times fewer faults. Through the CLI, one SFPO iteration on SmolLM2-135M
(8 prompts x 8, <= 192 new tokens) updated in 311 s with them against 445 s without (at a
64 KiB threshold). Importing the package sets it (``prefer_huge_pages``) unless the variable
is set already; the processes Ray starts inherit it. ``benchmarks/allocator_settings.py``
measures each setting on both update shapes and on generation.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading
from typing import Iterator

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
UPDATE_MMAP_THRESHOLD_BYTES = 2 * 1024 * 1024  # = torch's huge-page size: larger blocks get huge pages
GENERATION_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's own ceiling for the raised threshold

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"  # PyTorch's CPU allocator (c10/core/impl/alloc_cpu.cpp)
KERNEL_HUGE_PAGES = "/sys/kernel/mm/transparent_hugepage/enabled"

_lock = threading.Lock()
_updates_running = 0


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def set_mmap_threshold(threshold_bytes: int) -> bool:
    """Fix glibc's mmap threshold at ``threshold_bytes``; False where the C library is not glibc
    (macOS, musl): nothing to set there."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))


def release_free_heap_memory() -> bool:
    """Give the heaps' free pages back to the system (glibc's ``malloc_trim(0)``); True when some went back."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))


@contextlib.contextmanager
def malloc_for_update() -> Iterator[None]:
    """Around a learner's build or update: freed activations go back to the system at once."""
    global _updates_running
    with _lock:
        _updates_running += 1
        set_mmap_threshold(UPDATE_MMAP_THRESHOLD_BYTES)
    try:
        yield
    finally:
        with _lock:
            _updates_running -= 1


@contextlib.contextmanager
def malloc_for_generation() -> Iterator[None]:
    """Around generation: per-step blocks are reused from the heaps (unless an update runs in this
    process: its setting stays); afterwards the heaps' free pages go back, so an update that
    follows in the same process starts from what is live."""
    with _lock:
        if not _updates_running:
            set_mmap_threshold(GENERATION_MMAP_THRESHOLD_BYTES)
    try:
        yield
    finally:
        release_free_heap_memory()


def prefer_huge_pages() -> bool:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` for this process and those it starts, unless it is set
    already (``0`` switches it off) or the kernel has no transparent huge pages. torch reads it
    at its first allocation: a process that imported torch before this keeps what it had."""
    if HUGE_PAGES_ENV in os.environ or not os.path.exists(KERNEL_HUGE_PAGES):
        return False
    os.environ[HUGE_PAGES_ENV] = "1"
    return True

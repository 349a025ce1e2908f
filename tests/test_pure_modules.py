"""What runs without Ray: the pure-PyTorch modules (a GPU benchmark machine may have no Ray), and
the process-wide allocator settings the learners and env runners make."""

import platform
import subprocess
import sys

import pytest


# Ray, gymnasium and the environments' package made unimportable, as on a machine without them.
WITHOUT_RAY = """
import importlib.abc, importlib.util, sys
BLOCKED = ("ray", "gymnasium", "sfpo_envs", "vllm")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in BLOCKED else find_spec(name, *a)
import sfpo_rllib.logprobs, sfpo_rllib.losses, sfpo_rllib.rows, sfpo_rllib.lora, sfpo_rllib.slow_fast
import sfpo_rllib.engines.hf, sfpo_rllib.allocator
sys.path.insert(0, "benchmarks")
import real_arch, real_model_gpu
print("imported")
"""


def _fresh_python(code: str, **kwargs) -> str:
    """Run ``code`` in a new Python process (``kwargs`` go to ``subprocess.run``); its stdout."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, **kwargs)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_pure_pytorch_modules_and_the_gpu_benchmark_import_without_ray(tmp_path):
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert "imported" in _fresh_python(WITHOUT_RAY, cwd=root)


# Run in a fresh process: in a long-lived one (the whole suite), a free chunk of 16 MiB left in a
# heap by earlier tests serves the request whatever the threshold, and the test would say nothing.
PHASE_THRESHOLDS = """
import ctypes
from sfpo_rllib.allocator import malloc_for_generation, malloc_for_update

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes, libc.mallinfo2.restype = ctypes.c_void_p, [ctypes.c_void_p], Mallinfo2

def block_is_mapped():
    # Whether glibc serves a fresh 16 MiB malloc with its own mapping (mallinfo2's hblks), not from a heap.
    before = libc.mallinfo2().hblks
    block = libc.malloc(16 * 2**20)
    try:
        return libc.mallinfo2().hblks == before + 1
    finally:
        libc.free(block)

with malloc_for_generation():
    assert not block_is_mapped(), "generation: reused from the heaps"
with malloc_for_update():
    assert block_is_mapped(), "an update: mapped on its own, returned when freed"
    with malloc_for_generation():
        assert block_is_mapped(), "rollout_lag=1 in one process: the update's setting stays"
with malloc_for_generation():
    assert not block_is_mapped(), "generation again: from the heaps"
print("phases ok")
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_each_phase_sets_its_mmap_threshold_and_a_running_update_keeps_its_own():
    assert "phases ok" in _fresh_python(PHASE_THRESHOLDS)


# A 64 MiB tensor, then the huge pages of this process (kB). Importing the package first is what
# sets THP_MEM_ALLOC_ENABLE (sfpo_rllib/__init__.py), before torch exists.
HUGE_PAGES_OF_A_LARGE_TENSOR = """
import os, sfpo_rllib, torch
t = torch.ones(16 * 2**20)
print(os.environ.get("THP_MEM_ALLOC_ENABLE"),
      sum(int(line.split()[1]) for line in open("/proc/self/smaps") if line.startswith("AnonHugePages:")))
"""


def _huge_pages_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read()
    except OSError:
        return ""


# With "[always]" every large mapping gets huge pages, asked or not: nothing to tell apart.
@pytest.mark.skipif("[madvise]" not in _huge_pages_mode(), reason="the kernel's transparent huge pages are not 'madvise'")
def test_importing_the_package_gives_large_tensors_huge_pages_unless_the_user_said_no():
    import os

    def run(**env) -> list[str]:
        base = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        return _fresh_python(HUGE_PAGES_OF_A_LARGE_TENSOR, env={**base, **env}).split()

    setting, huge_kb = run()
    assert setting == "1" and int(huge_kb) >= 32 * 1024  # most of the 64 MiB in 2 MiB pages
    setting, huge_kb = run(THP_MEM_ALLOC_ENABLE="0")
    assert setting == "0" and int(huge_kb) < 32 * 1024

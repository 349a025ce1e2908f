"""What runs without Ray: the pure-PyTorch modules (a GPU benchmark machine may have no Ray), and
the process-wide allocator setting the learners and env runners make."""

import platform
import subprocess
import sys

import pytest

from sfpo_rllib.allocator import return_freed_memory_promptly

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


def test_pure_pytorch_modules_and_the_gpu_benchmark_import_without_ray(tmp_path):
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", WITHOUT_RAY], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr[-2000:]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_mmap_threshold_is_set_on_glibc():
    assert return_freed_memory_promptly() is True

"""Soak: many completions through the code environment, correct, wrong and hostile mixed,
while the host is watched. Rewards must be exactly as expected, nothing may be left behind
(processes, SysV segments, files in the shared temp folders, shared memory), and the memory
the runs hold must stay under the sandbox's stated worst case.

SFPO_SOAK_COMPLETIONS sets the size. The default, 600, takes about 80 s on 2 cores (CI's
main lane); 2000 take about 4.5 minutes (SFPO_SOAK_COMPLETIONS=2000). One run in 250 sleeps
until its 2 s timeout."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import sfpo_envs  # noqa: F401  (registers the ids)
from sfpo_envs import sandbox as sandbox_mod
from sfpo_envs.code_env import CodeEnv
from sfpo_envs.sandbox import Sandbox
from test_code_env import FORGERIES, TOY, _forgery, fenced, needs_namespaces
from test_sandbox import MEMORY_HOGS, _assert_no_leftovers, _our_uids

COMPLETIONS = int(os.environ.get("SFPO_SOAK_COMPLETIONS", "600"))
RIGHT = "def add(a, b):\n    return a + b\n"

# name -> (program, reward). Each defines a right add() after its attack: 0 where the attack
# must stop the program (a denied call raises), 1 where the program survives its own attack
# and the judge must be unharmed by it.
HOSTILE = {
    "stderr marker": (RIGHT + "import sys\nsys.stderr.write('sfpo-seccomp-failed: EPERM\\n')\nsys.exit(125)\n", 0.0),
    "memfd": (MEMORY_HOGS["memfd"] + RIGHT, 0.0),
    "SysV shm": (MEMORY_HOGS["sysv_shm"] + RIGHT, 0.0),
    "message queue": (MEMORY_HOGS["msg_queue"] + RIGHT, 0.0),
    "memory bomb": ("x = bytearray(1 << 40)\n" + RIGHT, 0.0),
    "recursion": ("def f(n):\n    return f(n + 1)\nf(0)\n" + RIGHT, 0.0),
    "fill /tmp": ("with open('/tmp/fill', 'wb') as f:\n    f.write(b'x' * (200 << 20))\n" + RIGHT, 0.0),
    "fork bomb": ("import os, time\nfor _ in range(64):\n    try:\n        pid = os.fork()\n    except OSError:\n"
                  "        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n" + RIGHT, 1.0),
    "output flood": ("import sys\nsys.stdout.write('x' * (1 << 24))\n" + RIGHT, 0.0),  # its pipe is closed: EPIPE
    "kill everything": ("import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
                        + RIGHT, 1.0),
    "detached child": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n" + RIGHT, 1.0),
}
SLEEPER = "import time\ntime.sleep(60)\n" + RIGHT  # times out: few of them, they cost wall time


def _mix(n: int) -> list[tuple[str, str, float]]:
    """``n`` (name, completion, expected reward): correct, wrong, forgeries, hostile, sleepers."""
    cases = [("right", fenced(RIGHT), 1.0), ("wrong", fenced("def add(a, b):\n    return a - b\n"), 0.0)]
    cases += [(f"forgery: {name}", _forgery(body), 0.0) for name, body in FORGERIES.items()]
    cases += [(f"hostile: {name}", fenced(code), reward) for name, (code, reward) in HOSTILE.items()]
    mix = [cases[i % len(cases)] for i in range(n)]
    for i in range(0, n, 250):  # one run per 250 that sleeps until its timeout
        mix[i] = ("sleeper", fenced(SLEEPER), 0.0)
    return mix


def _held_mb() -> int:
    """Resident memory of every process running as one of this process's sandbox uids."""
    uids, total = _our_uids(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        uid = int(fields["Uid"].split()[0])
        if (uid in uids or uid - sandbox_mod._JUDGE_UID_OFFSET in uids) and "VmRSS" in fields:
            total += int(fields["VmRSS"].split()[0])
    return total // 1024


def _shmem_mb() -> int:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(fields["Shmem"].split()[0]) // 1024


def _host_state() -> dict:
    return {
        "sysv_segments": len(Path("/proc/sysvipc/shm").read_text().splitlines()) - 1,
        "shared_tmp": {d: sorted(os.listdir(d)) for d in sandbox_mod._SHARED_TMP_DIRS if os.path.isdir(d)},
    }


@pytest.mark.slow
@needs_namespaces
def test_soak_rewards_exact_nothing_left_memory_bounded():
    env = CodeEnv(data=TOY, timeout_s=2, isolation="namespaces", max_workers=2, memory_mb=128)
    # Fewer processes than the default 16 keep the stated bound small on a shared CI host.
    env.sandbox = sandbox = Sandbox(timeout_s=2, isolation="namespaces", max_workers=2, memory_mb=128, max_processes=6)
    bound_mb = sandbox.max_workers * sandbox.worst_case_memory_mb
    mix = _mix(COMPLETIONS)
    before, shmem_before = _host_state(), _shmem_mb()
    peak = {"held_mb": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["held_mb"] = max(peak["held_mb"], _held_mb() + max(0, _shmem_mb() - shmem_before))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wrong = {}
    try:
        for start in range(0, len(mix), 64):  # batches as the env runner sends them
            chunk = mix[start:start + 64]
            verdicts = env.score([c for _, c, _ in chunk], [0] * len(chunk))
            for (name, _, expected), verdict in zip(chunk, verdicts):
                if verdict.reward != expected:
                    wrong.setdefault(name, (verdict.reward, expected, verdict.info.get("error")))
    finally:
        done.set()
        sampler.join()
    assert not wrong, f"rewards not as expected: {wrong}"
    _assert_no_leftovers()
    after = _host_state()
    assert after["sysv_segments"] <= before["sysv_segments"], (before, after)
    for folder, names in after["shared_tmp"].items():
        new = set(names) - set(before["shared_tmp"].get(folder, []))
        assert not [n for n in new if n.startswith("sfpo-")], f"left in {folder}: {new}"
    assert peak["held_mb"] <= bound_mb, f"runs held {peak['held_mb']} MiB, over the stated {bound_mb} MiB"

"""Worst-case host memory one hostile sandbox run takes, per isolation mode.

One program tries every way to hold memory the sandbox knows of: memfd, SysV shared memory,
POSIX message queues, files in /dev/shm and /tmp (host tmpfs in the weaker modes), and
``--processes`` processes that each allocate up to the address-space limit and hold it.
While it runs, what the run holds (resident memory of its processes + the rise in Shmem,
which counts tmpfs files) and host memory in use (MemTotal - MemAvailable, which other work
on the host moves too) are sampled every 10 ms; after it, what is left (Shmem, SysV segments, files of the run).
The bound printed is the one docs/security.md states for the mode:

    namespaces:  processes x memory_mb + judge's memory_mb + disk_mb (/tmp) + 2 MiB (root)
    uid+limits:  the same for processes, plus files in the host's /dev/shm and /tmp: no
                 bound but the file count the run reaches before its timeout

The limits are scaled down (a full 16 x 1 GiB run would take the memory other work on a
shared machine needs); the bound scales linearly with them. Other processes on the host
change MemAvailable too: run it on a quiet machine, more than once.

    sudo python benchmarks/sandbox_memory.py --memory-mb 256 --processes 4 --shm-files 32
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

from sfpo_envs.sandbox import _UID_BASE, Sandbox

HOSTILE = r"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
tried = {}
try:
    fd = os.memfd_create("hog"); os.ftruncate(fd, 256 << 20); os.write(fd, b"x" * (64 << 20))
    tried["memfd"] = "ok"
except OSError as e:
    tried["memfd"] = e.strerror
tried["shmget"] = libc.shmget(0, ctypes.c_size_t(256 << 20), 0o1666)
tried["msgget"] = libc.msgget(0, 0o1666)
# Files in shared temp folders: in the jail both are its own 64 MiB /tmp.
for folder in ("/dev/shm", "/tmp"):
    written = 0
    for i in range(SHM_FILES):
        try:
            with open(f"{folder}/hog-{os.getpid()}-{i}", "wb") as f:
                f.write(b"x" * (8 << 20))
            written += 8
        except OSError:
            break
    tried[folder] = written
print(tried, flush=True)

def hold():
    blocks = []
    try:
        while True:
            blocks.append(b"x" * (8 << 20))
    except MemoryError:
        pass
    time.sleep(HOLD_S)

for _ in range(PROCESSES - 1):
    if os.fork() == 0:
        hold()
        os._exit(0)
hold()
"""


def meminfo() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return {k: int(v.split()[0]) // 1024 for k, v in fields.items() if v.strip().endswith("kB")}


def used_mb() -> tuple[int, int]:
    m = meminfo()
    return m["MemTotal"] - m["MemAvailable"], m["Shmem"]


def jail_rss_mb() -> int:
    """Resident memory of every process running as a sandbox uid (program and judge)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if int(fields["Uid"].split()[0]) >= _UID_BASE and "VmRSS" in fields:
            total += int(fields["VmRSS"].split()[0])
    return total // 1024


def sysv_segments() -> int:
    return len(Path("/proc/sysvipc/shm").read_text().splitlines()) - 1


def measure(mode: str, args) -> dict:
    sandbox = Sandbox(isolation=mode, memory_mb=args.memory_mb, max_processes=args.processes,
                      timeout_s=args.hold_s + 4, disk_mb=args.disk_mb)
    sandbox.isolation  # probe before the baseline
    time.sleep(0.5)
    base_used, base_shm = used_mb()
    segments = sysv_segments()
    peak = [0, 0, 0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            used, shm = used_mb()
            held = jail_rss_mb() + shm - base_shm
            peak[0], peak[1], peak[2] = max(peak[0], used - base_used), max(peak[1], shm - base_shm), max(peak[2], held)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    program = f"SHM_FILES, PROCESSES, HOLD_S = {args.shm_files}, {args.processes}, {args.hold_s}\n" + HOSTILE
    result = sandbox.run(program)
    done.set()
    sampler.join()
    time.sleep(0.5)
    after_used, after_shm = used_mb()
    bound = sandbox.worst_case_memory_mb  # None: files in the host's /dev/shm are not bounded
    return {
        "mode": mode, "tried": result.stdout.strip()[:200], "peak_held_mb": peak[2], "peak_extra_mb": peak[0],
        "peak_extra_shmem_mb": peak[1], "bound_mb": bound if bound is not None else f"{(args.processes + 1) * args.memory_mb} + files",
        "left_mb": after_used - base_used, "left_shmem_mb": after_shm - base_shm,
        "left_sysv_segments": sysv_segments() - segments,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory-mb", type=int, default=256)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--disk-mb", type=int, default=64)
    parser.add_argument("--shm-files", type=int, default=32, help="8 MiB files tried per shared folder")
    parser.add_argument("--hold-s", type=float, default=2.0)
    parser.add_argument("--modes", default="namespaces,uid+limits")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (the sandbox's namespaces and uid+limits modes do)")
    rows = [measure(mode, args) for mode in args.modes.split(",")]
    print(f"memory_mb={args.memory_mb} processes={args.processes} disk_mb={args.disk_mb} "
          f"shm_files={args.shm_files} x 8 MiB")
    cols = ["mode", "peak_held_mb", "peak_extra_mb", "peak_extra_shmem_mb", "bound_mb", "left_mb", "left_shmem_mb",
            "left_sysv_segments"]
    print(" | ".join(cols))  # peak_held_mb is the figure to hold against bound_mb
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    for row in rows:
        print(f"{row['mode']}: {row['tried']}")


if __name__ == "__main__":
    main()

"""Run untrusted Python programs (model completions) and their tests in a throwaway jail.

Every program is treated as hostile. One run is one process tree that lives at most
``timeout_s`` seconds and is built from util-linux tools (present on every Debian/Ubuntu):

    setpriv --pdeathsig KILL          # the jail dies if the thread that started it dies
      unshare --net --pid --mount --ipc --uts --cgroup --fork --kill-child
        sh -c _NS_SETUP               # pid 1 of the jail: builds a new root, then runs
          choom -n 1000               #   ...each process, one exec after another
            prlimit <limits>
              setpriv --reuid=<uid> --no-new-privs --bounding-set=-all ...
                python -I -S -B -c <stub> ...   # envs/judge.py: seccomp filter, then the role

``Sandbox.run(program)`` runs one program ("passed" = exit status 0).
``Sandbox.run(program, tests)`` runs the program and, under another uid, a judge that runs
the tests against it and alone can report that they passed (envs/judge.py says why).

Isolation modes, probed once per interpreter (``Sandbox.isolation`` says which is active):

* ``"namespaces"``: everything above (needs root on a host that permits unshare).
* ``"uid+limits"``: no namespaces; resource limits, throwaway uids and a temp dir.
* ``"limits"``: resource limits and a temp dir only (the code runs as the caller).

A mode that this machine does not offer (no root, unshare refused) is skipped; a probe that
runs out of time is tried again and then raises, never picks a weaker mode. The fallbacks
are logged once as a warning naming what is missing, and so is a missing
libseccomp (then no seccomp filter). ``Sandbox.run`` and ``Sandbox.run_batch`` (bounded
thread pool) return one ``RunResult`` per program.
"""

from __future__ import annotations

import atexit
import copy
import fcntl
import functools
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

ISOLATION_MODES = ("namespaces", "uid+limits", "limits")

# Host paths the jail sees, read-only (plus the interpreter's prefixes). Everything else
# (/root, /home, /work, /run, /var, /mnt, the host's /tmp and /dev/shm) does not exist in it.
DEFAULT_RO_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")

# Each concurrent run gets its own uid: RLIMIT_NPROC counts processes per uid across the
# whole host, so a fork bomb in one run must not eat the process budget of another run
# (or of an unrelated `nobody` process). uid = base + pid * 256 + slot stays < 2**31.
_UID_BASE = 1_000_000_000
_MAX_SLOTS = 256

# Environment of the jailed program: nothing is inherited from the trainer (API keys,
# tokens, cluster addresses live in env vars).
_CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"

# Starts the program, and with tests also the judge (envs/judge.py says why two
# processes), which reads the tests from this script's stdin. Positional args: pdir
# judge_n judge_argv... program_argv...; pdir holds the two FIFOs in a root-only
# directory: the redirections below open them as root before each command drops to its
# own uid, so neither can open anything else there.
_LAUNCH = r"""
pdir=$1 judge_n=$2
shift 2
if [ "$judge_n" -eq 0 ]; then
  "$@" </dev/null
  exit $?
fi
# The two argv lists, as "${1}" "${2}"... for eval: no value is ever parsed as code.
judge= program= i=1
while [ "$i" -le "$judge_n" ]; do judge="$judge \"\${$i}\""; i=$((i + 1)); done
while [ "$i" -le "$#" ]; do program="$program \"\${$i}\""; i=$((i + 1)); done
eval "exec $program" </dev/null 3<"$pdir/calls" 4>"$pdir/replies" &
program_pid=$!
# The tests' prints are dropped; the judge's own stderr (only if it crashes) is kept.
eval "$judge" >/dev/null 3>"$pdir/calls" 4<"$pdir/replies"
wait "$program_pid"
exit $?
"""

# Builds the jail. Runs as root inside fresh namespaces, as pid 1 (it stays pid 1 so that
# unshare's --kill-child tears the whole namespace down; setpriv would clear that signal).
# The mounts themselves are listed, with the attack each one stops, in _jail_layout.
# Positional args: skeleton root fstab root_mb program_bytes, then _LAUNCH's.
_NS_SETUP = r"""
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
skel=$1 root=$2 fstab=$3 root_mb=$4 program_bytes=$5
shift 5
# The new root is a fresh tmpfs filled from the skeleton, not a bind of a host directory:
# /proc/self/mountinfo then shows "/" for it, not where the jail lives on the host.
mount -n -t tmpfs -o "size=${root_mb}m,mode=755,nosuid,nodev" sfpo-root "$root"
cp -a "$skel/." "$root/"
# The allowlisted, read-only host paths, /proc, /dev and /tmp (every mount and why: _jail_layout).
mount -n -a -T "$fstab"
# The program, then the tests, come on stdin: nothing of them is written to the host's
# disk; the program goes to /tmp/main.py, the tests stay on stdin for the judge.
head -c "$program_bytes" > "$root/tmp/main.py"
mount -n -o remount,ro,nosuid,nodev "$root"
# Make the new root "/" and detach the host's root: the rest of the host's filesystem
# (and any path to it, e.g. via ..) is gone from this namespace.
cd "$root"
pivot_root . .
umount -l .
cd /tmp
# The program starts only after this line, so it cannot fake it.
echo %(ready)s
set +e
export PATH=%(child_path)s HOME=/tmp TMPDIR=/tmp
""".replace("%(child_path)s", _CHILD_PATH).replace("%(ready)s", "sfpo-jail-ready") + _LAUNCH
_READY = b"sfpo-jail-ready\n"

# The weaker modes: no namespaces, the parent wrote main.py and the FIFOs; just launch.
_PLAIN_SETUP = "set +e\n" + _LAUNCH

# Runs envs/judge.py inside the jail for every role (program, judge, plain) from a copy
# whose .pyc the jail's interpreter made (compiling its source costs 12 ms a process).
_RUNTIME_MODULE = "sfpo_judge"
_RUNTIME_STUB = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import sfpo_judge; del sys.path[0]; "
    "sfpo_judge.main(sys.argv[1:])"
)
_JAIL_RUNTIME_DIR = "/.sfpo-runtime"

# The judge's uid is the program's plus this: another unprivileged uid per run, so the
# program cannot signal, trace or open the files of the judge (uids stay < 2**32 - 1).
_JUDGE_UID_OFFSET = 1 << 31

# The write ends of the status and verdict pipes in the jail get numbers >= this, clear of
# the fds the launch script and the roles use (0-4).
_VERDICT_FD_MIN = 10

# Size of the jail's root tmpfs: it holds only mount points, FIFOs and the runtime.
_JAIL_ROOT_MB = 2

# The isolation probe's time limit per try (at least the sandbox's own) and its tries.
_PROBE_TIMEOUT_S = 20.0
_PROBE_ATTEMPTS = 3


class SandboxError(RuntimeError):
    """The jail itself failed (not the program in it): raised, never scored as a 0."""


@dataclass
class RunResult:
    """What happened to one program."""

    passed: bool  # exited with status 0 before the timeout; with tests: they all passed
    timed_out: bool
    returncode: int | None  # exit status; None when killed by a signal or timed out
    signal: str | None  # e.g. "SIGKILL" (limits) or "SIGSEGV" (stack overflow)
    stdout: str  # at most max_output_bytes (see *_truncated)
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    error: str | None  # one line: last traceback line, "timed out after 2s", ...
    duration_s: float
    isolation: str
    # With tests: ``passed`` is the judge's verdict (the tests ran to their end in another
    # process), not the program's exit status, which ``returncode`` still reports.
    judged: bool = False


@dataclass
class _Mode:
    name: str
    drop_uid: bool


_slot_lock = threading.Lock()
_free_slots = list(range(_MAX_SLOTS))
_probe_lock = threading.Lock()
_probed: dict[tuple, tuple[str, str]] = {}  # config key -> (mode, why the better ones failed)
_warned: set[str] = set()  # fallback modes already warned about (once per process)


def _acquire_uid() -> tuple[int, int]:
    with _slot_lock:
        if not _free_slots:
            raise SandboxError(
                f"More than {_MAX_SLOTS} sandbox runs at once in this process; lower "
                "`max_workers` (runs beyond the pool wait for a free worker anyway)."
            )
        slot = _free_slots.pop()
    return slot, _UID_BASE + (os.getpid() % (1 << 22)) * _MAX_SLOTS + slot


def _release_uid(slot: int) -> None:
    with _slot_lock:
        _free_slots.append(slot)


@functools.lru_cache(maxsize=None)
def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    if path is None:
        raise SandboxError(
            f"The sandbox needs `{name}` from util-linux, which is not installed; "
            "install it (Debian/Ubuntu: apt-get install util-linux)."
        )
    return path


def _python_prefixes(python: str) -> tuple[str, ...]:
    """The directories the interpreter needs (stdlib, site-packages): bound read-only."""
    out = subprocess.run(
        [python, "-I", "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
        capture_output=True, text=True, timeout=60, env={"PATH": _CHILD_PATH},
    )
    if out.returncode != 0:
        raise SandboxError(
            f"`python` ({python!r}) does not run: {out.stderr.strip()[-300:]}; pass the "
            "path of a working Python interpreter."
        )
    exe_dir = os.path.dirname(os.path.abspath(python))
    return tuple(dict.fromkeys([*out.stdout.split(), exe_dir]))


# Denied to every jailed process (EPERM) by a seccomp filter that libseccomp builds in the
# trainer and the process installs before any of the program's code runs. A denylist of
# what a program never needs and what escapes or attacks use: new namespaces (a user
# namespace gives root-in-namespace and a large kernel attack surface), mounts, tracing
# and reading other processes, the kernel keyring, eBPF, perf, io_uring (whose operations
# bypass seccomp), kernel modules and other admin calls.
SECCOMP_DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff",
    "acct", "quotactl", "syslog", "lookup_dcookie", "personality",
    # Memory that RLIMIT_AS does not count and that can outlive the process: anonymous
    # files (memfd), SysV shared memory and message queues, POSIX message queues.
    "memfd_create", "memfd_secret", "shmget", "shmat", "msgget", "mq_open",
)
# clone() flags that make new namespaces (clone3 hides its flags in memory that seccomp
# cannot read, so it gets ENOSYS and libc falls back to clone).
_CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                          0x20000000, 0x40000000)
_seccomp_lock = threading.Lock()
_seccomp_built: list[str | None] = []  # [filter] once built (None: no libseccomp)


def _seccomp_filter() -> str | None:
    """The filter as hex-encoded classic BPF (built once), or None without libseccomp."""
    with _seccomp_lock:
        if not _seccomp_built:
            _seccomp_built.append(_build_seccomp_filter())
        return _seccomp_built[0]


def _build_seccomp_filter() -> str | None:
    try:
        import errno

        import pyseccomp as seccomp

        rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in SECCOMP_DENIED:
            try:
                rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
            except (RuntimeError, ValueError, OSError):
                pass  # not a syscall of this architecture or libseccomp version
        for flag in _CLONE_NAMESPACE_FLAGS:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as f:
            rules.export_bpf(f)
            f.seek(0)
            return f.read().hex()
    except Exception as exc:  # ImportError, or libseccomp.so itself missing/broken
        logger.warning(
            "sfpo sandbox: running untrusted code WITHOUT a seccomp filter (%s: %s): jailed "
            "programs can create user namespaces, use ptrace, io_uring, eBPF and other "
            "kernel interfaces that escapes use. To fix, `pip install pyseccomp` and "
            "install libseccomp (Debian/Ubuntu: apt-get install libseccomp2).",
            type(exc).__name__, exc,
        )
        return None


def _summarize(stderr: str, returncode: int | None, sig: str | None) -> str:
    if sig is not None:
        hint = {
            "SIGKILL": " (CPU-time or memory limit)",
            "SIGXCPU": " (CPU-time limit)",
            "SIGXFSZ": " (file-size limit)",
            "SIGSEGV": " (crash, e.g. stack overflow from deep recursion)",
        }.get(sig, "")
        return f"killed by {sig}{hint}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if lines:
        return lines[-1][:300]
    return f"exit status {returncode}"


class Sandbox:
    """Runs Python programs in isolated, resource-limited, throwaway processes.

    Args:
        timeout_s: wall-clock limit per run; the whole process tree is killed after it.
        cpu_s: CPU-time limit per process (default: timeout_s rounded up, plus 1).
        memory_mb: address-space limit per process (RLIMIT_AS).
        max_processes: processes and threads per run (RLIMIT_NPROC on the run's own uid).
        file_size_mb: largest file a run may write (RLIMIT_FSIZE).
        disk_mb: size of the run's writable /tmp (namespaces mode).
        max_output_bytes: bytes of stdout and of stderr kept; past it the pipe is closed,
            so a program that floods its output gets EPIPE and ends instead of burning CPU.
        max_workers: runs at once in ``run_batch``.
        python: interpreter for the programs (default: the base interpreter of the one
            running this code, outside any virtualenv).
        site_packages: let programs import the interpreter's installed packages. Off by
            default: the standard library only, and no site hooks (``.pth`` files) run at
            each start (they can cost 100+ ms per run). For the trainer's own packages
            pass ``python=sys.executable, site_packages=True``.
        isolation: "auto" (best available, probed once), or one of ISOLATION_MODES to
            require it (SandboxError if this machine cannot provide it).
        ro_paths: host paths visible read-only in namespaces mode (plus the interpreter's).
    """

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        cpu_s: int | None = None,
        memory_mb: int = 1024,
        max_processes: int = 16,
        file_size_mb: int = 16,
        disk_mb: int = 64,
        max_output_bytes: int = 64 * 1024,
        max_workers: int = 2,
        python: str | None = None,
        site_packages: bool = False,
        isolation: str = "auto",
        ro_paths: Sequence[str] = DEFAULT_RO_PATHS,
    ):
        for name, value, low in (
            ("memory_mb", memory_mb, 64), ("max_processes", max_processes, 1),
            ("file_size_mb", file_size_mb, 1), ("disk_mb", disk_mb, 1),
            ("max_output_bytes", max_output_bytes, 1), ("max_workers", max_workers, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` ({value!r}) must be an int >= {low}.")
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < math.inf):
            raise ValueError(f"`timeout_s` ({timeout_s!r}) must be a positive number of seconds.")
        if cpu_s is not None and (not isinstance(cpu_s, int) or cpu_s < 1):
            raise ValueError(f"`cpu_s` ({cpu_s!r}) must be an int >= 1 (seconds), or None.")
        bad_paths = [p for p in ro_paths if not isinstance(p, str) or not os.path.isabs(p)]
        if bad_paths:
            raise ValueError(f"`ro_paths` must hold absolute paths; these are not: {bad_paths}.")
        if max_workers > _MAX_SLOTS:
            raise ValueError(f"`max_workers` ({max_workers}) must be <= {_MAX_SLOTS}.")
        if isolation != "auto" and isolation not in ISOLATION_MODES:
            raise ValueError(
                f"`isolation` ({isolation!r}) must be 'auto' or one of {ISOLATION_MODES}."
            )
        self.timeout_s = float(timeout_s)
        self.cpu_s = int(cpu_s) if cpu_s is not None else math.ceil(timeout_s) + 1
        self.memory_mb = memory_mb
        self.max_processes = max_processes
        self.file_size_mb = file_size_mb
        self.disk_mb = disk_mb
        self.max_output_bytes = max_output_bytes
        self.max_workers = max_workers
        self.python = os.path.abspath(python or getattr(sys, "_base_executable", sys.executable))
        if not (os.path.isfile(self.python) and os.access(self.python, os.X_OK)):
            raise ValueError(
                f"`python` ({self.python!r}) is not an executable file; pass the path of a "
                "Python interpreter (e.g. sys.executable), or leave it unset."
            )
        self.site_packages = bool(site_packages)
        self.requested_isolation = isolation
        self.ro_paths = tuple(ro_paths)
        self._mode: _Mode | None = None
        self._seccomp = _seccomp_filter()

    # ----- public API ----------------------------------------------------------------
    @property
    def isolation(self) -> str:
        """The isolation mode in use (probes the machine on first use)."""
        return self._get_mode().name

    @property
    def worst_case_memory_mb(self) -> int | None:
        """Host memory one run can hold at most (MiB), or None where files in the host's
        /dev/shm are not bounded (the modes without a mount namespace; docs/security.md).

        ``max_processes`` x ``memory_mb`` for the program's processes, ``memory_mb`` for
        the judge, and the jail's tmpfs (``disk_mb`` for /tmp and /dev/shm, plus the root):
        memfd, SysV and POSIX IPC memory are denied by the seccomp filter.
        """
        if self.isolation != "namespaces":
            return None
        return self.max_processes * self.memory_mb + self.memory_mb + self.disk_mb + _JAIL_ROOT_MB

    def run(self, program: str, tests: str | None = None, entry_points: Sequence[str] = ()) -> RunResult:
        """Run one Python program; ``passed`` means it exited 0 within the limits.

        With ``tests`` (Python source that fails by raising, e.g. asserts), the program
        only defines things and the tests run in a separate judge process that calls into
        it; ``passed`` then means the tests ran to their end (see envs/judge.py). Names
        the tests use without defining them are the program's, except builtins, unless
        listed in ``entry_points`` (e.g. a task that asks for a function called ``sum``).
        """
        if not isinstance(program, str) or not isinstance(tests, (str, type(None))):
            raise TypeError(
                f"run() takes the program source (str) and tests (str or None), got "
                f"{type(program).__name__} and {type(tests).__name__}."
            )
        bad_names = [n for n in entry_points if not (isinstance(n, str) and n.isidentifier())]
        if bad_names or isinstance(entry_points, str):
            raise ValueError(f"`entry_points` must be a list of Python identifiers, got {entry_points!r}.")
        mode = self._get_mode()
        size = len(program.encode("utf-8", "surrogatepass")) + len((tests or "").encode("utf-8", "surrogatepass"))
        if size > self.file_size_mb * 1024 * 1024 // 2:
            # Refused, not run: a program this big cannot be a real solution, and it must
            # not fill the jail's /tmp before its setup is done.
            return RunResult(
                passed=False, timed_out=False, returncode=None, signal=None, stdout="",
                stderr="", stdout_truncated=False, stderr_truncated=False,
                error=f"program of {size} bytes is over half of file_size_mb={self.file_size_mb}",
                duration_s=0.0, isolation=mode.name, judged=tests is not None,
            )
        slot, uid = _acquire_uid()
        try:
            return self._run(program, tests, mode, uid, tuple(entry_points))
        finally:
            _release_uid(slot)

    def run_batch(
        self, programs: Sequence[str], tests: Sequence[str] | None = None,
        entry_points: Sequence[Sequence[str]] | None = None,
    ) -> list[RunResult]:
        """Run many programs (with ``tests[i]`` and ``entry_points[i]`` for program i, if
        given), at most ``max_workers`` at once; results in input order."""
        programs = list(programs)
        tests_list = [None] * len(programs) if tests is None else list(tests)
        names_list = [()] * len(programs) if entry_points is None else list(entry_points)
        if not len(tests_list) == len(names_list) == len(programs):
            raise ValueError(
                f"run_batch got {len(programs)} programs, {len(tests_list)} tests and "
                f"{len(names_list)} entry_points: one each per program."
            )
        if len(programs) <= 1:
            return [self.run(*args) for args in zip(programs, tests_list, names_list)]
        self._get_mode()  # probe once, before the threads race for it
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(programs))) as pool:
            return list(pool.map(self.run, programs, tests_list, names_list))

    # ----- isolation probe -------------------------------------------------------------
    def _get_mode(self) -> _Mode:
        if self._mode is None:
            key = (self.python, self.site_packages, self.ro_paths, self.requested_isolation)
            with _probe_lock:
                if key not in _probed:
                    _probed[key] = self._probe()
            name, _ = _probed[key]
            self._mode = _Mode(name, drop_uid=name != "limits")
        return self._mode

    def _probe(self) -> tuple[str, str]:
        """Try the modes from strongest to weakest with a harmless program."""
        candidates = ISOLATION_MODES if self.requested_isolation == "auto" else (self.requested_isolation,)
        failures = []
        for name in candidates:
            if name != "limits" and os.geteuid() != 0:
                failures.append(f"{name}: needs root (running as uid {os.geteuid()})")
                continue
            mode = _Mode(name, drop_uid=name != "limits")
            # The probe gets its own, generous time limit, and a probe that runs out of
            # time (a loaded machine) is tried again: slowness must never pick a weaker mode.
            prober = copy.copy(self)
            prober.timeout_s = max(self.timeout_s, _PROBE_TIMEOUT_S)
            prober.cpu_s = max(self.cpu_s, math.ceil(_PROBE_TIMEOUT_S) + 1)
            for _attempt in range(_PROBE_ATTEMPTS):
                slot, uid = _acquire_uid()
                try:
                    # json is not a frozen module: the interpreter must reach its stdlib.
                    result = prober._run("import os, json; print('sfpo-ok', os.getuid())", None, mode, uid)
                    ok = result.passed and result.stdout.split() == ["sfpo-ok", str(uid if mode.drop_uid else os.getuid())]
                    why, slow = result.error or result.stdout.strip()[:200], result.timed_out
                except (SandboxError, OSError) as exc:
                    ok, why, slow = False, str(exc)[:300], False
                finally:
                    _release_uid(slot)
                if not slow:
                    break
            if slow:
                raise SandboxError(
                    f"The sandbox's probe of isolation mode {name!r} timed out {_PROBE_ATTEMPTS} times "
                    f"(after {prober.timeout_s:g}s each): the machine is too loaded to tell whether "
                    "it works, and a weaker mode is never chosen for that reason. Retry when the "
                    "machine is less busy, or pass isolation='uid+limits' to choose that mode."
                )
            if ok:
                self._warn_fallback(name, failures)
                return name, "; ".join(failures)
            failures.append(f"{name}: {why}")
        raise SandboxError(
            f"No sandbox isolation mode works on this machine (isolation={self.requested_isolation!r}): "
            + "; ".join(failures)
            + ". With isolation='namespaces', run as root on a host that permits `unshare` "
            "(not in a container without CAP_SYS_ADMIN); otherwise use isolation='auto'."
        )

    @staticmethod
    def _warn_fallback(name: str, failures: list[str]) -> None:
        if name == "namespaces" or name in _warned:
            return
        _warned.add(name)
        missing = (
            "NO network isolation (programs can open sockets, reach the trainer and the "
            "internet), NO filesystem isolation (they can read world-readable files and "
            "write to world-writable dirs such as /tmp), NO PID isolation (a program that "
            "detaches with setsid may outlive its timeout until its CPU limit)"
        )
        if name == "limits":
            missing += (
                ", and programs run as THIS user: they can read and delete your files "
                "(~/.ssh, checkpoints), kill your processes, and forge a passing test verdict "
                "(the judge runs under the same uid)"
            )
            if os.geteuid() == 0:
                missing += "; as root, the process-count limit is not enforced (a fork bomb can take the machine down)"
        why = f"the stronger modes failed ({'; '.join(failures)})" if failures else f"isolation={name!r} was requested"
        logger.warning(
            "sfpo sandbox: running untrusted code in the weaker '%s' mode because %s. "
            "That means: %s. To fix, run as root on a host that permits `unshare` "
            "(Linux namespaces) with isolation='auto'.",
            name, why, missing,
        )

    # ----- one run ---------------------------------------------------------------------
    def _limits_args(self) -> list[str]:
        mb = 1024 * 1024
        return [
            _tool("prlimit"),
            f"--as={self.memory_mb * mb}",
            f"--cpu={self.cpu_s}",
            f"--nproc={self.max_processes}",
            f"--fsize={self.file_size_mb * mb}",
            "--nofile=256",
            "--core=0",  # no core dumps of a crashed program
            "--msgqueue=0",  # no POSIX message queue memory (also denied by seccomp)
            "--",
        ]

    def _drop_args(self, uid: int) -> list[str]:
        # An unprivileged throwaway uid: cannot read root-only files, signal the trainer,
        # or regain privileges (no capabilities, no setuid binaries).
        return [
            _tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
        ]

    def _python_args(self, runtime: str, role: str, status_w: int, *args: object, site: bool = False) -> list[str]:
        flags = ["-I", "-B"] if site else ["-I", "-B", "-S"]
        return [self.python, *flags, "-c", _RUNTIME_STUB, runtime, role, self._seccomp or "",
                str(status_w), *map(str, args)]

    def _run(self, program: str, tests: str | None, mode: _Mode, uid: int,
             entry_points: tuple[str, ...] = ()) -> RunResult:
        # choom: if memory runs out anyway, the OOM killer takes a jailed process first.
        limited = [_tool("choom"), "-n", "1000", "--", *self._limits_args()]
        site = "site" if self.site_packages else "nosite"
        runtime = _JAIL_RUNTIME_DIR if mode.name == "namespaces" else _runtime_dir(self.python)
        # The jail's status pipe: each role reports a failure of its own setup there and
        # closes it before the program's first line, so no output of the program can
        # pass for a fault of the jail (nor stop the run).
        status_r, status_w = _high_pipe()
        verdict_r = verdict_w = None
        if tests is None:
            judge_argv: list[str] = []
            program_argv = [*limited, *(self._drop_args(uid) if mode.drop_uid else []),
                            *self._python_args(runtime, "plain", status_w, site, site=self.site_packages)]
        else:
            # The verdict pipe: only the judge (and the root launcher) hold its write end.
            verdict_r, verdict_w = _high_pipe()
            judge_uid = uid + _JUDGE_UID_OFFSET
            judge_argv = [*limited, *(self._drop_args(judge_uid) if mode.drop_uid else []),
                          *self._python_args(runtime, "judge", status_w, verdict_w, 3, 4, ",".join(entry_points))]
            program_argv = [*limited, *(self._drop_args(uid) if mode.drop_uid else []),
                            *self._python_args(runtime, "program", status_w, site, 3, 4, site=self.site_packages)]
        launch = [str(len(judge_argv)), *judge_argv, *program_argv]
        # Dies with the trainer thread that started it (no orphaned jails).
        outer = [_tool("setpriv"), "--pdeathsig", "KILL", "--"]
        env = {"PATH": _CHILD_PATH, "LANG": "C.UTF-8"}
        workdir = pdir = None
        try:
            program_bytes = program.encode("utf-8", "surrogatepass")
            tests_bytes = (tests or "").encode("utf-8", "surrogatepass")
            if mode.name == "namespaces":
                skeleton, root, fstab = _jail_layout(self.ro_paths, self.python, self.disk_mb)
                cmd = [
                    *outer, _tool("unshare"),
                    "--net",  # no network: only a down loopback, no host sockets
                    "--pid", "--fork", "--kill-child",  # kill -9 -1 reaches only the jail
                    "--mount",  # private mounts for the new root below
                    "--ipc", "--uts", "--cgroup",  # no host SysV shm/semaphores, hostname
                    "--", "/bin/sh", "-c", _NS_SETUP, "sh",
                    skeleton, root, fstab, str(_JAIL_ROOT_MB), str(len(program_bytes)),
                    "/.sfpo", *launch,
                ]
                stdin_data = program_bytes + tests_bytes
                cwd = "/"
            else:
                # An empty private directory for the program, removed afterwards; the FIFOs
                # and the tests in another, which only the launcher (the caller) can open.
                workdir = tempfile.mkdtemp(prefix="sfpo-sandbox-")
                with open(os.path.join(workdir, "main.py"), "wb") as f:
                    f.write(program_bytes)
                if mode.drop_uid:
                    os.chown(workdir, uid, uid)
                    os.chmod(workdir, 0o700)
                    os.chown(os.path.join(workdir, "main.py"), uid, uid)
                pdir = tempfile.mkdtemp(prefix="sfpo-judge-")
                _make_fifos(pdir)
                env.update(HOME=workdir, TMPDIR=workdir)
                cmd = [*outer, "/bin/sh", "-c", _PLAIN_SETUP, "sh", pdir, *launch]
                stdin_data, cwd = tests_bytes, workdir
        except BaseException:
            for fd in (status_r, status_w, verdict_r, verdict_w):
                if fd is not None:
                    os.close(fd)
            for path in (workdir, pdir):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
            raise
        try:
            # Owns (and closes) the status and verdict pipes from here on.
            return self._execute(cmd, env, cwd, stdin_data, mode, (status_r, status_w), (verdict_r, verdict_w))
        finally:
            for path in (workdir, pdir):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
            if mode.name == "uid+limits":
                _remove_files_of({uid, uid + _JUDGE_UID_OFFSET})

    def _execute(self, cmd, env, cwd, stdin_data, mode, status, verdict) -> RunResult:
        start = time.monotonic()
        deadline = start + self.timeout_s
        jailed = mode.name == "namespaces"
        status_file = os.fdopen(status[0], "rb", buffering=0)
        verdict_file = None if verdict[0] is None else os.fdopen(verdict[0], "rb", buffering=0)
        write_ends = tuple(fd for fd in (status[1], verdict[1]) if fd is not None)
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd, bufsize=0,
                start_new_session=True,  # own process group to kill; no controlling terminal
                pass_fds=write_ends,
            )
        except BaseException:
            for stream in (status_file, verdict_file):
                if stream is not None:
                    stream.close()
            raise
        finally:
            for fd in write_ends:
                os.close(fd)  # now only the jail holds them: EOF when the jail is gone
        try:
            streams = {"stdout": proc.stdout, "stderr": proc.stderr, "status": status_file}
            if verdict_file is not None:
                streams["verdict"] = verdict_file
            extra = len(_READY) if jailed else 0
            out, truncated, timed_out = self._collect(proc, streams, extra, stdin_data, deadline)
        finally:
            # In namespaces mode killing unshare kills pid 1 of the jail and with it every
            # process in the jail; the group kill covers setup and the fallback modes.
            if proc.poll() is None or mode.name != "namespaces":
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr, status_file, verdict_file):
                if stream is not None:
                    stream.close()
        duration = time.monotonic() - start
        raw_out = bytes(out["stdout"])
        stderr = out["stderr"].decode("utf-8", "replace")
        if jailed and raw_out.startswith(_READY):
            raw_out = raw_out[len(_READY):]
        elif jailed and not timed_out:
            raise SandboxError(
                f"The sandbox failed to set up its jail (exit status {proc.returncode}): "
                f"{stderr.strip()[-500:]}. This is a fault of the host, not of the program; "
                "check that unshare/mount work as root here, or pass isolation='auto'."
            )
        jail_status = bytes(out["status"]).decode("utf-8", "replace").strip()
        if jail_status:
            raise SandboxError(
                f"The sandbox's jail failed: {jail_status[:300]}. This is a fault of the host "
                "(a kernel without seccomp?), not of the program."
            )
        stdout = raw_out.decode("utf-8", "replace")
        returncode, sig = _decode_status(proc.returncode, namespaced=jailed)
        judged = verdict_file is not None
        verdict = _parse_verdict(bytes(out.get("verdict", b""))) if judged else None
        if timed_out:
            returncode, error = None, f"timed out after {self.timeout_s:g}s (wall clock)"
            passed = False
        elif judged:
            passed = verdict is not None and verdict["passed"] is True
            error = None if passed else _judged_error(verdict, stderr, returncode, sig)
        else:
            passed = returncode == 0
            error = None if passed else _summarize(stderr, returncode, sig)
        if error is not None and not timed_out and (truncated["stdout"] or truncated["stderr"]):
            error = f"output exceeded max_output_bytes={self.max_output_bytes} ({error})"
        return RunResult(
            passed=passed, timed_out=timed_out,
            returncode=returncode, signal=sig, stdout=stdout, stderr=stderr,
            stdout_truncated=truncated["stdout"], stderr_truncated=truncated["stderr"],
            error=error, duration_s=duration, isolation=mode.name, judged=judged,
        )

    def _collect(self, proc, streams, extra_stdout, stdin_data, deadline):
        """Feed stdin; read the pipes until EOF, the cap or the deadline, keeping <= cap."""
        out = {name: bytearray() for name in streams}
        caps = {name: self.max_output_bytes for name in streams}
        caps["stdout"] += extra_stdout
        truncated = {name: False for name in streams}
        sel = selectors.DefaultSelector()
        for name, stream in streams.items():
            os.set_blocking(stream.fileno(), False)
            sel.register(stream, selectors.EVENT_READ, name)
        pending = memoryview(stdin_data) if stdin_data is not None else None
        if pending is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
        exited_at = None
        try:
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    return out, truncated, True
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                # Without a PID namespace a detached grandchild can hold the pipes open:
                # the run is over when its main process is.
                if exited_at is not None and now - exited_at > 0.2:
                    break
                for key, _ in sel.select(timeout=min(0.1, deadline - now)):
                    name = key.data
                    if name == "stdin":
                        try:
                            pending = pending[os.write(key.fd, pending[:65536]):]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            pending = pending[:0]  # setup died before reading; reported later
                        if not pending:
                            sel.unregister(key.fileobj)
                            proc.stdin.close()
                        continue
                    try:
                        data = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    room = caps[name] - len(out[name])
                    out[name] += data[:room]
                    if not data:
                        sel.unregister(key.fileobj)
                    elif len(data) > room:
                        # Over the cap: stop reading and close our end, so the writer gets
                        # EPIPE and ends instead of flooding us until the timeout.
                        sel.unregister(key.fileobj)
                        truncated[name] = True
                        streams[name].close()
        finally:
            sel.close()
        return out, truncated, False


# World-writable host folders a run without a mount namespace can leave files in; /dev/shm
# is host memory.
_SHARED_TMP_DIRS = ("/dev/shm", "/tmp", "/var/tmp")


def _remove_files_of(uids: set[int]) -> None:
    """Delete what a finished uid+limits run left in the shared temp folders (its throwaway
    uids own nothing else on the host)."""
    for folder in _SHARED_TMP_DIRS:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid not in uids:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def _high_pipe() -> tuple[int, int]:
    """A pipe whose write end (close-on-exec until passed on) is numbered >= _VERDICT_FD_MIN."""
    read_end, low_w = os.pipe()
    write_end = fcntl.fcntl(low_w, fcntl.F_DUPFD_CLOEXEC, _VERDICT_FD_MIN)
    os.close(low_w)
    return read_end, write_end


def _make_fifos(pdir: str) -> None:
    """The judge's FIFOs in the weaker modes (namespaces mode: the skeleton's /.sfpo)."""
    os.chmod(pdir, 0o700)
    for name in ("calls", "replies"):
        os.mkfifo(os.path.join(pdir, name), 0o600)


_runtime_lock = threading.Lock()
_runtimes: dict[str, tuple[str, int]] = {}  # python -> (directory, creator pid)


def _runtime_dir(python: str) -> str:
    """A world-readable host directory with envs/judge.py as sfpo_judge.py and the .pyc
    that ``python`` made of it (once per process; removed at exit)."""
    with _runtime_lock:
        cached = _runtimes.get(python)
        if cached is not None and cached[1] == os.getpid() and os.path.isdir(cached[0]):
            return cached[0]
        directory = tempfile.mkdtemp(prefix="sfpo-runtime-")
        os.chmod(directory, 0o755)
        atexit.register(_remove_layout, directory, os.getpid())
        source = os.path.join(directory, _RUNTIME_MODULE + ".py")
        shutil.copyfile(Path(__file__).with_name("judge.py"), source)
        os.chmod(source, 0o644)
        compiled = subprocess.run(
            [python, "-I", "-S", "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)", source],
            capture_output=True, text=True, timeout=60, env={"PATH": _CHILD_PATH},
        )
        if compiled.returncode != 0:  # still works, from source, only slower
            logger.warning("sfpo sandbox: could not precompile the judge runtime: %s", compiled.stderr.strip()[-300:])
        for dirpath, dirnames, filenames in os.walk(directory):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        _runtimes[python] = (directory, os.getpid())
        return directory


def _parse_verdict(raw: bytes) -> dict | None:
    """The judge's one JSON line, or None (no verdict: the judge died or never ran)."""
    import json

    try:
        verdict = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    if type(verdict) is not dict or type(verdict.get("passed")) is not bool:
        return None
    return verdict


def _judged_error(verdict, stderr, returncode, sig) -> str:
    if verdict is None:
        return "the test judge ended without a verdict (" + _summarize(stderr, returncode, sig) + ")"
    error = str(verdict.get("error") or "the tests failed")
    if sig is not None and error.startswith("the program ended"):
        error = f"{error}: {_summarize(stderr, returncode, sig)}"
    return error


_layout_lock = threading.Lock()
_layouts: dict[tuple, tuple[str, str, str, int]] = {}  # key -> (skeleton, root, fstab, creator pid)


def _jail_layout(ro_paths: Sequence[str], python: str, disk_mb: int) -> tuple[str, str, str]:
    """``(skeleton, root, fstab)``: what each run's setup copies, mounts onto and applies.

    Made once per process (root-owned, removed at exit) in one host directory: the
    skeleton holds the empty mount points, symlinks and the judge's FIFOs; each run, in
    its own mount namespace, mounts a small tmpfs on ``root``, copies the skeleton into it
    with one ``cp -a`` and applies the fstab with one ``mount -a``: a handful of
    processes, not dozens, and no host path in the jail's /proc/self/mountinfo.
    """
    key = (tuple(ro_paths), python, disk_mb)
    with _layout_lock:
        cached = _layouts.get(key)
        if cached is not None and cached[3] == os.getpid() and os.path.isdir(cached[0]):
            return cached[0], cached[1], cached[2]
        base = tempfile.mkdtemp(prefix="sfpo-jail-")
        os.chmod(base, 0o755)
        skeleton, root, fstab = base + "/skeleton", base + "/root", base + "/fstab"
        os.mkdir(skeleton, 0o755)
        os.mkdir(root, 0o755)
        atexit.register(_remove_layout, base, os.getpid())
        mounts = []
        for path in _outermost([*ro_paths, *_python_prefixes(python)]):
            inside = skeleton + path
            if os.path.islink(path):
                os.makedirs(os.path.dirname(inside), mode=0o755, exist_ok=True)
                os.symlink(os.readlink(path), inside)  # e.g. /bin -> usr/bin
                continue
            if not os.path.exists(path):
                continue
            if os.path.isdir(path):
                os.makedirs(inside, mode=0o755)
            else:
                os.makedirs(os.path.dirname(inside), mode=0o755, exist_ok=True)
                open(inside, "w").close()
            # An allowlist of host paths, read-only and non-recursive: home dirs, the
            # repo, keys and sockets do not exist in the jail; nothing on the host can be
            # written or deleted; setuid binaries get no privileges.
            mounts.append((path, root + path, "none", "bind,ro,nosuid,nodev"))
        for name in ("proc", "tmp", "dev"):
            os.makedirs(os.path.join(skeleton, name), mode=0o755, exist_ok=True)
        # /proc of the jail's PID namespace: only the jail's own processes are visible.
        mounts.append(("proc", root + "/proc", "proc", "nosuid,nodev,noexec"))
        # A minimal /dev: no disks, no host /dev/shm (the jail's /dev/shm is its /tmp).
        for name in ("null", "zero", "random", "urandom"):
            open(os.path.join(skeleton, "dev", name), "w").close()
            mounts.append(("/dev/" + name, f"{root}/dev/{name}", "none", "bind"))
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                             ("shm", "/tmp")):
            os.symlink(target, os.path.join(skeleton, "dev", name))
        # The runtime of every jailed Python (envs/judge.py), readable by all.
        shutil.copytree(_runtime_dir(python), skeleton + _JAIL_RUNTIME_DIR)
        # The judge's channel to the program: root-only (see _LAUNCH).
        os.mkdir(skeleton + "/.sfpo", 0o700)
        for name in ("calls", "replies"):
            os.mkfifo(f"{skeleton}/.sfpo/{name}", 0o600)
        # The only writable place: a size-capped tmpfs that vanishes with the namespace.
        mounts.append(("sfpo-tmp", root + "/tmp", "tmpfs", f"size={disk_mb}m,mode=1777,nosuid,nodev"))
        with open(fstab, "w") as f:
            for source, target, fstype, options in mounts:
                f.write(f"{_fstab_escape(source)} {_fstab_escape(target)} {fstype} {options} 0 0\n")
        _layouts[key] = (skeleton, root, fstab, os.getpid())
        return skeleton, root, fstab


def _fstab_escape(path: str) -> str:
    # fstab fields are separated by whitespace; mount(8) reads octal escapes.
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def _remove_layout(base: str, creator: int) -> None:
    if os.getpid() == creator:  # not from a forked child that inherited the atexit hook
        shutil.rmtree(base, ignore_errors=True)


def _outermost(paths: Sequence[str]) -> list[str]:
    """Drop paths inside another listed path: that one's bind already shows them."""
    paths = [os.path.normpath(p) for p in dict.fromkeys(paths)]
    return [
        p for p in paths
        if not any(q != p and (p + "/").startswith(q.rstrip("/") + "/") for q in paths)
    ]


def _decode_status(returncode: int, namespaced: bool) -> tuple[int | None, str | None]:
    if returncode < 0:
        return None, _signal_name(-returncode)
    # The jail's pid-1 shell reports a program killed by signal N as exit status 128+N.
    if namespaced and 128 < returncode < 128 + 65:
        return None, _signal_name(returncode - 128)
    return returncode, None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"

"""Run untrusted Python programs (model completions plus their tests) in a throwaway jail.

Every program is treated as hostile. One run is one process tree that lives at most
``timeout_s`` seconds and is built from util-linux tools (present on every Debian/Ubuntu):

    setpriv --pdeathsig KILL          # the jail dies if the thread that started it dies
      unshare --net --pid --mount --ipc --uts --cgroup --fork --kill-child
        sh -c _NS_SETUP               # pid 1 of the jail: builds a new root, then runs
          choom -n 1000               #   ...the program, one exec after another
            prlimit <limits>
              setpriv --reuid=<uid> --no-new-privs --bounding-set=-all ...
                python -I -S -B main.py   # (through a one-line -c runner, see below)

Isolation modes, probed once per interpreter (``Sandbox.isolation`` says which is active):

* ``"namespaces"``: everything above (needs root on a host that permits unshare).
* ``"uid+limits"``: no namespaces; resource limits, a throwaway uid and a temp dir.
* ``"limits"``: resource limits and a temp dir only (the code runs as the caller).

The fallbacks are logged once as a warning naming what is missing. ``Sandbox.run`` and
``Sandbox.run_batch`` (bounded thread pool) return one ``RunResult`` per program.
"""

from __future__ import annotations

import atexit
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

# Builds the jail. Runs as root inside fresh namespaces, as pid 1 (it stays pid 1 so that
# unshare's --kill-child tears the whole namespace down; setpriv would clear that signal).
# The mounts themselves are listed, with the attack each one stops, in _jail_layout.
# Positional args: root fstab command...
_NS_SETUP = r"""
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
root=$1 fstab=$2
shift 2
# The allowlisted, read-only root (every mount and why: _jail_layout).
mount -n -a -T "$fstab"
# The program comes on stdin: nothing of it is written to the host's disk.
cat > "$root/tmp/main.py"
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
"$@" </dev/null
exit $?
""".replace("%(child_path)s", _CHILD_PATH).replace("%(ready)s", "sfpo-jail-ready")
_READY = b"sfpo-jail-ready\n"


# With -S, run main.py as `python main.py` would, plus the exit()/quit() builtins that
# the skipped site module would have added (programs do call them).
_RUN_MAIN_WITHOUT_SITE = (
    "import site, sys; site.setquit(); del site; __file__ = sys.argv[0] = 'main.py'; "
    "exec(compile(open(__file__, 'rb').read(), __file__, 'exec'))"
)


class SandboxError(RuntimeError):
    """The jail itself failed (not the program in it): raised, never scored as a 0."""


@dataclass
class RunResult:
    """What happened to one program."""

    passed: bool  # exited with status 0 before the timeout
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

    # ----- public API ----------------------------------------------------------------
    @property
    def isolation(self) -> str:
        """The isolation mode in use (probes the machine on first use)."""
        return self._get_mode().name

    def run(self, program: str) -> RunResult:
        """Run one Python program; ``passed`` means it exited 0 within the limits."""
        if not isinstance(program, str):
            raise TypeError(f"run() takes the program source (str), got {type(program).__name__}.")
        mode = self._get_mode()
        size = len(program.encode("utf-8", "surrogatepass"))
        if size > self.file_size_mb * 1024 * 1024 // 2:
            # Refused, not run: a program this big cannot be a real solution, and it must
            # not fill the jail's /tmp before its setup is done.
            return RunResult(
                passed=False, timed_out=False, returncode=None, signal=None, stdout="",
                stderr="", stdout_truncated=False, stderr_truncated=False,
                error=f"program of {size} bytes is over half of file_size_mb={self.file_size_mb}",
                duration_s=0.0, isolation=mode.name,
            )
        slot, uid = _acquire_uid()
        try:
            return self._run(program, mode, uid)
        finally:
            _release_uid(slot)

    def run_batch(self, programs: Sequence[str]) -> list[RunResult]:
        """Run many programs, at most ``max_workers`` at once; results in input order."""
        programs = list(programs)
        if len(programs) <= 1:
            return [self.run(p) for p in programs]
        self._get_mode()  # probe once, before the threads race for it
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(programs))) as pool:
            return list(pool.map(self.run, programs))

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
            slot, uid = _acquire_uid()
            try:
                # json is not a frozen module: the interpreter must reach its stdlib.
                result = self._run("import os, json; print('sfpo-ok', os.getuid())", mode, uid)
                ok = result.passed and result.stdout.split() == ["sfpo-ok", str(uid if mode.drop_uid else os.getuid())]
                why = result.error or result.stdout.strip()[:200]
            except (SandboxError, OSError) as exc:
                ok, why = False, str(exc)[:300]
            finally:
                _release_uid(slot)
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
                "(~/.ssh, checkpoints) and kill your processes"
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
            "--",
        ]

    def _drop_args(self, uid: int) -> list[str]:
        # An unprivileged throwaway uid: cannot read root-only files, signal the trainer,
        # or regain privileges (no capabilities, no setuid binaries).
        return [
            _tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
        ]

    def _run(self, program: str, mode: _Mode, uid: int) -> RunResult:
        # choom: if memory runs out anyway, the OOM killer takes a jailed process first.
        jailed = [_tool("choom"), "-n", "1000", "--", *self._limits_args()]
        if mode.drop_uid:
            jailed += self._drop_args(uid)
        jailed += [self.python, "-I", "-B", "main.py"] if self.site_packages else [
            self.python, "-I", "-B", "-S", "-c", _RUN_MAIN_WITHOUT_SITE]
        # Dies with the trainer thread that started it (no orphaned jails).
        outer = [_tool("setpriv"), "--pdeathsig", "KILL", "--"]
        env = {"PATH": _CHILD_PATH, "LANG": "C.UTF-8"}
        workdir = None
        try:
            if mode.name == "namespaces":
                root, fstab = _jail_layout(self.ro_paths, self.python, self.disk_mb)
                cmd = [
                    *outer, _tool("unshare"),
                    "--net",  # no network: only a down loopback, no host sockets
                    "--pid", "--fork", "--kill-child",  # kill -9 -1 reaches only the jail
                    "--mount",  # private mounts for the new root below
                    "--ipc", "--uts", "--cgroup",  # no host SysV shm/semaphores, hostname
                    "--", "/bin/sh", "-c", _NS_SETUP, "sh",
                    root, fstab, *jailed,
                ]
                stdin_data = program.encode("utf-8", "surrogatepass")
                cwd = "/"
            else:
                # An empty private directory, removed afterwards.
                workdir = tempfile.mkdtemp(prefix="sfpo-sandbox-")
                with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8", errors="surrogatepass") as f:
                    f.write(program)
                if mode.drop_uid:
                    os.chown(workdir, uid, uid)
                    os.chmod(workdir, 0o700)
                    os.chown(os.path.join(workdir, "main.py"), uid, uid)
                env.update(HOME=workdir, TMPDIR=workdir)
                cmd = [*outer, *jailed]
                stdin_data, cwd = None, workdir
            return self._execute(cmd, env, cwd, stdin_data, mode)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)

    def _execute(self, cmd, env, cwd, stdin_data, mode) -> RunResult:
        start = time.monotonic()
        deadline = start + self.timeout_s
        jailed = mode.name == "namespaces"
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd, bufsize=0,
            start_new_session=True,  # own process group to kill; no controlling terminal
        )
        try:
            streams = {"stdout": proc.stdout, "stderr": proc.stderr}
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
            for stream in (proc.stdin, proc.stdout, proc.stderr):
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
        stdout = raw_out.decode("utf-8", "replace")
        returncode, sig = _decode_status(proc.returncode, namespaced=jailed)
        if timed_out:
            returncode, error = None, f"timed out after {self.timeout_s:g}s (wall clock)"
        else:
            error = None if returncode == 0 else _summarize(stderr, returncode, sig)
            if error is not None and (truncated["stdout"] or truncated["stderr"]):
                error = f"output exceeded max_output_bytes={self.max_output_bytes} ({error})"
        return RunResult(
            passed=returncode == 0 and not timed_out, timed_out=timed_out,
            returncode=returncode, signal=sig, stdout=stdout, stderr=stderr,
            stdout_truncated=truncated["stdout"], stderr_truncated=truncated["stderr"],
            error=error, duration_s=duration, isolation=mode.name,
        )

    def _collect(self, proc, streams, extra_stdout, stdin_data, deadline):
        """Feed stdin; read the pipes until EOF, the cap or the deadline, keeping <= cap."""
        out = {"stdout": bytearray(), "stderr": bytearray()}
        caps = {"stdout": self.max_output_bytes + extra_stdout, "stderr": self.max_output_bytes}
        truncated = {"stdout": False, "stderr": False}
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


_layout_lock = threading.Lock()
_layouts: dict[tuple, tuple[str, str, int]] = {}  # key -> (root, fstab, creator pid)


def _jail_layout(ro_paths: Sequence[str], python: str, disk_mb: int) -> tuple[str, str]:
    """The jail's root directory and the fstab that ``mount -a`` applies to it.

    The root is a host directory of empty mount points (root-owned, made once per process
    and removed at exit); every run mounts onto it in its own mount namespace with one
    ``mount -a``, so building a jail costs a handful of processes, not dozens.
    """
    key = (tuple(ro_paths), python, disk_mb)
    with _layout_lock:
        cached = _layouts.get(key)
        if cached is not None and cached[2] == os.getpid() and os.path.isdir(cached[0]):
            return cached[0], cached[1]
        root = tempfile.mkdtemp(prefix="sfpo-jail-root-")
        os.chmod(root, 0o755)
        fstab = root + ".fstab"
        atexit.register(_remove_layout, root, fstab, os.getpid())
        # The new root itself, read-only: nothing can be created at the top of the jail.
        mounts = [(root, root, "none", "bind,ro")]
        for path in _outermost([*ro_paths, *_python_prefixes(python)]):
            inside = root + path
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
            mounts.append((path, inside, "none", "bind,ro,nosuid,nodev"))
        for name in ("proc", "tmp", "dev"):
            os.makedirs(os.path.join(root, name), mode=0o755, exist_ok=True)
        # /proc of the jail's PID namespace: only the jail's own processes are visible.
        mounts.append(("proc", root + "/proc", "proc", "nosuid,nodev,noexec"))
        # A minimal /dev: no disks, no host /dev/shm (the jail's /dev/shm is its /tmp).
        for name in ("null", "zero", "random", "urandom"):
            open(os.path.join(root, "dev", name), "w").close()
            mounts.append(("/dev/" + name, f"{root}/dev/{name}", "none", "bind"))
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                             ("shm", "/tmp")):
            os.symlink(target, os.path.join(root, "dev", name))
        # The only writable place: a size-capped tmpfs that vanishes with the namespace.
        mounts.append(("sfpo-tmp", root + "/tmp", "tmpfs", f"size={disk_mb}m,mode=1777,nosuid,nodev"))
        with open(fstab, "w") as f:
            for source, target, fstype, options in mounts:
                f.write(f"{_fstab_escape(source)} {_fstab_escape(target)} {fstype} {options} 0 0\n")
        _layouts[key] = (root, fstab, os.getpid())
        return root, fstab


def _fstab_escape(path: str) -> str:
    # fstab fields are separated by whitespace; mount(8) reads octal escapes.
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def _remove_layout(root: str, fstab: str, creator: int) -> None:
    if os.getpid() == creator:  # not from a forked child that inherited the atexit hook
        shutil.rmtree(root, ignore_errors=True)
        if os.path.exists(fstab):
            os.remove(fstab)


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

"""The sandbox: results, limits, judged runs, and hostile programs that must not harm the host.

Judged runs (``run(program, tests)``) are checked in every isolation mode; from inside the
jail, that the program cannot reach the judge, its pipes or its tests, and that the seccomp
filter denies what it lists.

Hostile programs run only through a Sandbox that requires the "namespaces" mode, and only
after ``verified_jail`` has checked the jail from the inside (unprivileged uid, read-only
root, no host files, no network, own PID namespace). The fork bomb and kill tests come
last in this file. Every hostile run must end within its limits, and afterwards no
process of this test's sandbox uids may be left.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sfpo_envs import sandbox as sandbox_mod
from sfpo_envs.sandbox import RunResult, Sandbox, SandboxError

from conftest import NAMESPACES, needs_namespaces

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 3.0
SLACK = 3.0  # seconds a timed-out run may take beyond its limit (kill, teardown, load)


def _our_uids() -> range:
    """The throwaway uids this process's sandbox runs get (see sandbox._acquire_uid)."""
    base = sandbox_mod._UID_BASE + (os.getpid() % (1 << 22)) * sandbox_mod._MAX_SLOTS
    return range(base, base + sandbox_mod._MAX_SLOTS)


def _leftovers() -> list[tuple[int, str]]:
    """Processes still running as one of our sandbox uids, or descended from this test."""
    uids, found, parents = _our_uids(), [], {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields["Uid"].split()[0])
        parents[int(entry)] = int(fields["PPid"])
        if uid in uids or uid - sandbox_mod._JUDGE_UID_OFFSET in uids:
            found.append((int(entry), f"uid {uid} {fields['Name'].strip()}"))
    me = os.getpid()
    for pid in parents:
        chain, p = [], pid
        while p in parents and p not in (0, 1, me) and len(chain) < 64:
            chain.append(p)
            p = parents[p]
        if p == me and pid != me:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80]
            except OSError:
                cmd = b"?"
            found.append((pid, f"descendant: {cmd.decode(errors='replace')}"))
    return found


def _assert_no_leftovers(known: tuple[int, ...] = ()) -> None:
    deadline = time.monotonic() + 3
    while True:
        left = [(pid, what) for pid, what in _leftovers() if pid not in known]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # teardown of a killed namespace is asynchronous
    assert not left, f"processes left behind by the sandbox: {left}"


@pytest.fixture(scope="module")
def jail() -> Sandbox:
    if not NAMESPACES:
        pytest.skip("Linux namespaces are not available here")
    return Sandbox(timeout_s=TIMEOUT, isolation="namespaces", max_workers=4)


@pytest.fixture(scope="module", params=["jail", "uid+limits", "limits"])
def jail_or_fallback(request) -> Sandbox:
    """Judged runs must work in every isolation mode (the weaker ones warn)."""
    if request.param == "jail":
        if not NAMESPACES:
            pytest.skip("Linux namespaces are not available here")
        return Sandbox(timeout_s=TIMEOUT * 2, isolation="namespaces", max_workers=4)
    if request.param == "uid+limits" and os.geteuid() != 0:
        pytest.skip("uid+limits needs root")
    sandbox_mod._warned.add(request.param)  # the fallback warning has its own test
    return Sandbox(timeout_s=TIMEOUT * 2, isolation=request.param, max_workers=4)


@pytest.fixture(scope="module")
def verified_jail(jail, tmp_path_factory) -> Sandbox:
    """The jail, after checking from the inside that its layers are in place."""
    host_dir = tmp_path_factory.mktemp("visible")
    (host_dir / "canary").write_text("host")
    probe = f"""
import os, socket, json
out = {{"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups()}}
for path in ("/", "/usr", "/etc"):
    try:
        open(os.path.join(path, "sfpo_probe"), "w")
        out["writable:" + path] = True
    except OSError:
        out["writable:" + path] = False
out["host_dir"] = os.path.exists({str(host_dir)!r})
out["repo"] = os.path.exists({str(REPO / "setup.cfg")!r})
out["root_home"] = os.listdir("/root")
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1)
    out["net"] = True
except OSError:
    out["net"] = False
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["caps"] = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "CapPrm", "NoNewPrivs"))]
print(json.dumps(out))
"""
    result = jail.run(probe)
    assert result.passed, result
    import json

    seen = json.loads(result.stdout)
    assert seen["uid"] in _our_uids() and seen["euid"] == seen["uid"], seen
    assert seen["groups"] in ([], [seen["uid"]]), seen
    assert not any(v for k, v in seen.items() if k.startswith("writable:")), seen
    assert not seen["host_dir"] and not seen["repo"], seen
    assert seen["net"] is False, seen
    assert max(seen["pids"]) < 100, f"host processes visible in the jail: {seen['pids']}"
    assert "CapEff:\t0000000000000000\n" in seen["caps"], seen["caps"]
    assert "NoNewPrivs:\t1\n" in seen["caps"], seen["caps"]
    return jail


# ----- results and settings ---------------------------------------------------------


def test_results_report_exit_status_output_and_error(jail):
    ok, fails, syntax, exits = jail.run_batch([
        "print('hello')",
        "def f():\n    return 1\nassert f() == 2",
        "def f(:\n    pass",
        "import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)",
    ])
    assert ok.passed and ok.returncode == 0 and ok.stdout == "hello\n" and ok.error is None
    assert ok.isolation == "namespaces" and 0 < ok.duration_s < TIMEOUT
    assert not fails.passed and fails.returncode == 1 and fails.error == "AssertionError"
    assert not syntax.passed and syntax.error.startswith("SyntaxError"), syntax.error
    assert exits.returncode == 3 and exits.stderr == "bye\n" and exits.error == "bye"


def test_name_error_summary(jail):
    result = jail.run("print(undefined_name)")
    assert result.error == "NameError: name 'undefined_name' is not defined"


def test_run_batch_keeps_order_and_bounds_parallelism():
    sandbox = Sandbox(timeout_s=10, max_workers=2)
    start = time.monotonic()
    results = sandbox.run_batch([f"import time\ntime.sleep(1)\nprint({i})" for i in range(4)])
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]
    # 4 one-second programs on 2 workers: two rounds, not one (unbounded) or four (serial).
    assert 2.0 <= elapsed < 3.9, elapsed


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"memory_mb": 10}, "memory_mb"),
        ({"max_workers": 0}, "max_workers"),
        ({"max_output_bytes": 0}, "max_output_bytes"),
        ({"isolation": "chroot"}, "isolation"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, setting):
    with pytest.raises(ValueError, match=f"`{setting}`"):
        Sandbox(**kwargs)


def test_missing_interpreter_names_the_setting():
    with pytest.raises(ValueError, match="`python`"):
        Sandbox(python="/nonexistent/python3")


def test_infrastructure_failure_raises_instead_of_scoring(monkeypatch):
    """A jail that cannot be built is the host's fault: raise, never report a failed run."""
    if not NAMESPACES:
        pytest.skip("Linux namespaces are not available here")
    sandbox = Sandbox(isolation="namespaces")
    assert sandbox.isolation == "namespaces"
    monkeypatch.setattr(sandbox_mod, "_NS_SETUP", "echo 'mount: permission denied' >&2; exit 32")
    with pytest.raises(SandboxError, match="failed to set up its jail.*permission denied"):
        sandbox.run("pass")


def test_standard_library_only_unless_site_packages():
    plain = Sandbox(timeout_s=20).run("import json, math\nimport numpy")
    assert plain.error == "ModuleNotFoundError: No module named 'numpy'", plain
    with_site = Sandbox(timeout_s=20, python=sys.executable, site_packages=True)
    result = with_site.run("import numpy\nprint(int(numpy.arange(4).sum()))")
    assert result.passed and result.stdout == "6\n", result


def test_exit_and_quit_work_without_site():
    results = Sandbox().run_batch(["exit(0)", "quit(5)", "import sys\nprint(sys.argv, __name__)"])
    assert results[0].passed and results[1].returncode == 5
    assert results[2].stdout == "['main.py'] __main__\n"


def test_oversized_program_is_refused_without_running():
    result = Sandbox(file_size_mb=1).run("x = 1\n" + "#" * (1024 * 1024))
    assert not result.passed and "file_size_mb=1" in result.error and result.duration_s == 0


def test_isolation_is_namespaces_where_the_machine_allows_it():
    sandbox = Sandbox()
    if NAMESPACES:
        assert sandbox.isolation == "namespaces"
    else:
        assert sandbox.isolation in ("uid+limits", "limits")


def test_fallback_mode_runs_code_and_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(sandbox_mod, "_probed", {})
    monkeypatch.setattr(sandbox_mod, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="sfpo_envs.sandbox"):
        sandbox = Sandbox(timeout_s=5, isolation="limits")
        first, second = sandbox.run("print(6 * 7)"), Sandbox(isolation="limits").run("pass")
    assert first.passed and first.stdout == "42\n" and first.isolation == "limits"
    assert second.passed
    warnings = [r for r in caplog.records if "weaker 'limits' mode" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "NO network isolation" in warnings[0].getMessage()
    _assert_no_leftovers()


def test_auto_falls_back_when_the_jail_cannot_be_built(monkeypatch, caplog):
    """As on a host that forbids unshare: the probe must notice, fall back, and say so."""
    monkeypatch.setattr(sandbox_mod, "_probed", {})
    monkeypatch.setattr(sandbox_mod, "_warned", set())
    monkeypatch.setattr(sandbox_mod, "_NS_SETUP", "echo 'unshare: Operation not permitted' >&2; exit 1")
    with caplog.at_level(logging.WARNING, logger="sfpo_envs.sandbox"):
        sandbox = Sandbox(timeout_s=5)
        assert sandbox.isolation in ("uid+limits", "limits")
        assert sandbox.run("print('still runs')").stdout == "still runs\n"
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "namespaces: " in message and "Operation not permitted" in message, message
    with pytest.raises(SandboxError, match="No sandbox isolation mode works"):
        Sandbox(isolation="namespaces").isolation


def test_fallback_mode_still_has_timeout_and_clean_env(monkeypatch):
    monkeypatch.setattr(sandbox_mod, "_warned", {"limits"})
    monkeypatch.setenv("SFPO_TEST_SECRET", "hunter2")
    sandbox = Sandbox(timeout_s=1.5, isolation="limits")
    slept, env = sandbox.run_batch(["import time\ntime.sleep(30)", "import os\nprint(dict(os.environ))"])
    assert slept.timed_out and not slept.passed and slept.duration_s < 1.5 + SLACK
    assert "hunter2" not in env.stdout and "SFPO_TEST_SECRET" not in env.stdout
    _assert_no_leftovers()


# ----- tests judged in a separate process -----------------------------------------

ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


def test_judged_run_reports_the_verdict_not_the_exit_status(jail_or_fallback):
    ok, wrong, crash, early, silent = jail_or_fallback.run_batch(
        [
            "def add(a, b):\n    return a + b\nprint('loaded')",
            "def add(a, b):\n    return a - b",
            "def add(a, b):\n    return a + b\nundefined_name",
            "import os\nos._exit(0)",
            "def plus(a, b):\n    return a + b",
        ],
        [ADD_TESTS] * 5,
    )
    assert ok.passed and ok.judged and ok.error is None and ok.stdout == "loaded\n", ok
    assert not wrong.passed and wrong.returncode == 0 and wrong.error == "AssertionError", wrong
    assert not crash.passed and crash.error == "NameError: name 'undefined_name' is not defined", crash
    assert not early.passed and early.returncode == 0, early
    assert early.error == "the program ended before its tests finished", early
    assert silent.error == "NameError: name 'add' is not defined", silent


def test_judge_sees_plain_values_exceptions_and_helpers(jail_or_fallback):
    program = (
        "import collections\n"
        "def parts(s):\n    return (s.upper(), [1.5, None], {'k': {1, 2}}, b'x', 1 + 2j, range(3))\n"
        "def counts(s):\n    return collections.Counter(s)\n"
        "def gen(n):\n    return (i * i for i in range(n))\n"
        "def fail(x):\n    raise ValueError(f'bad {x}')\n"
        "def stop():\n    raise StopIteration\n"
        "def sum(xs):\n    return -1\n"
        "def abs(x):\n    return 0\n"
        "LIMIT = 7\n"
    )
    tests = (
        "assert parts('a') == ('A', [1.5, None], {'k': {1, 2}}, b'x', 1 + 2j, range(3))\n"
        "assert type(parts('a')[0]) is str and counts('aab') == {'a': 2, 'b': 1}\n"
        "assert list(gen(4)) == [0, 1, 4, 9] and LIMIT == 7\n"
        "try:\n    fail(3)\n    raise AssertionError('no error')\nexcept ValueError as e:\n    assert str(e) == 'bad 3'\n"
        "try:\n    stop()\nexcept StopIteration:\n    raise AssertionError('StopIteration reached the tests')\nexcept Exception:\n    pass\n"
        "assert abs(-2) == 2\n"  # builtins stay the judge's ...
        "assert sum([1, 2]) == -1\n"  # ... unless the tests ask for the program's
    )
    result = jail_or_fallback.run(program, tests, entry_points=["sum"])
    assert result.passed, result


def test_values_cross_as_exact_builtins_only():
    """The codec between program and judge: plain values round-trip, nothing else gets in."""
    import json

    from sfpo_envs import judge

    def cross(value):
        return judge.decode(json.loads(json.dumps(judge.encode(value))))

    values = [None, True, -0.0, float("inf"), 10**5000, -(2**300), "é\ud800", b"\x00\xff",
              (1, [2, (3,)]), {(1, 2): {"k": frozenset({1})}}, {1, 2}, 1 + 2j, range(1, 9, 2)]
    for value in values:
        out = cross(value)
        assert out == value and type(out) is type(value), (value, out)
    assert cross({"a": 1}.items()) == {"a": 1}.items() and list(cross(x for x in "ab")) == ["a", "b"]

    class Yes(int):
        __eq__ = lambda self, other: True
        __hash__ = int.__hash__

    assert type(cross(Yes(3))) is int and cross(Yes(3)) != 4
    assert cross(collections.Counter("aab")) == {"a": 2, "b": 1}
    with pytest.raises(TypeError, match="cannot pass between the program and its tests"):
        judge.encode(object())
    for forged in ({"$sfpo": "object", "v": []}, {"$sfpo": "tuple", "v": [], "x": 1}, {"__class__": "Yes"}):
        with pytest.raises(ValueError):
            judge.decode(forged)


@needs_namespaces
def test_program_cannot_reach_the_judge_or_its_verdict(verified_jail):
    spy = r"""
import os, json, signal
fds = {}
for fd in os.listdir('/proc/self/fd'):
    try:
        fds[int(fd)] = os.readlink(f'/proc/self/fd/{fd}')
    except OSError:
        pass  # the listing's own fd, closed by now
seen = {"fds": sorted(fds)}
others = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid())]
seen["others"] = {}
for pid in others:
    status = dict(l.split(':\t', 1) for l in open(f'/proc/{pid}/status') if ':\t' in l)
    entry = seen["others"][pid] = {"uid": int(status["Uid"].split()[0])}
    for what, action in (("fd", lambda: os.listdir(f'/proc/{pid}/fd')),
                         ("kill", lambda: os.kill(pid, signal.SIGKILL)),
                         ("mem", lambda: open(f'/proc/{pid}/mem', 'rb'))):
        try:
            action()
            entry[what] = "allowed"
        except OSError as exc:
            entry[what] = exc.errno
for path in ('/.sfpo/tests.py', '/.sfpo/calls', '/.sfpo/replies', '/.sfpo'):
    try:
        open(path, 'rb') if path != '/.sfpo' else os.listdir(path)
        seen[path] = "allowed"
    except OSError as exc:
        seen[path] = exc.errno
seen["uid"] = os.getuid()
print(json.dumps(seen))
def add(a, b):
    return 0
"""
    result = verified_jail.run(spy, ADD_TESTS)
    assert not result.passed and result.error == "AssertionError", result
    import json

    seen = json.loads(result.stdout)
    assert seen["fds"] == [0, 1, 2, 3, 4], seen  # stdio and the two call pipes, nothing else
    # The judge is there, under another uid, and like the jail's root init out of reach.
    assert [e["uid"] != seen["uid"] and e["uid"] != 0 for e in seen["others"].values()] == [True], seen
    for entry in seen["others"].values():
        assert entry["kill"] == 1 and entry["fd"] == entry["mem"] == 13, seen  # EPERM, EACCES
    for path in ('/.sfpo/tests.py', '/.sfpo/calls', '/.sfpo/replies', '/.sfpo'):
        assert seen[path] == 13, seen  # EACCES


@needs_namespaces
def test_seccomp_denies_namespaces_tracing_and_kernel_interfaces(verified_jail):
    if verified_jail._seccomp is None:
        pytest.skip("no seccomp filter: pyseccomp or libseccomp is missing (the sandbox warned)")
    probe = r"""
import ctypes, errno, os, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
SYS = {"unshare": 272, "setns": 308, "mount": 165, "ptrace": 101, "bpf": 321, "keyctl": 250,
       "clone": 56, "io_uring_setup": 425, "perf_event_open": 298, "userfaultfd": 323}
def call(name, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(SYS[name], *[ctypes.c_long(a) for a in args])
    return "ok" if ret >= 0 else errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
out = {
    "unshare(NEWUSER)": call("unshare", CLONE_NEWUSER),
    "unshare(NEWNET)": call("unshare", CLONE_NEWNET),
    "setns": call("setns", 0, 0),
    "mount": call("mount", 0, 0, 0, 0, 0),
    "ptrace(TRACEME)": call("ptrace", 0, 0, 0, 0),
    "bpf": call("bpf", 0, 0, 0),
    "keyctl": call("keyctl", 0, 0, 0),
    "clone(NEWUSER)": call("clone", CLONE_NEWUSER | 17, 0, 0, 0, 0),
    "io_uring_setup": call("io_uring_setup", 1, 0),
    "perf_event_open": call("perf_event_open", 0, 0, -1, -1, 0),
    "userfaultfd": call("userfaultfd", 0),
}
out["unshare -Ur"] = subprocess.run(["unshare", "-Ur", "true"], capture_output=True).returncode
# What programs do need still works: fork, exec, threads.
out["subprocess"] = subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout
t = threading.Thread(target=lambda: None)
t.start(); t.join()
out["mountinfo"] = open("/proc/self/mountinfo").read()
out["status"] = [l.strip() for l in open("/proc/self/status") if l.startswith("Seccomp")]
print(repr(out))
"""
    result = verified_jail.run(probe)
    assert result.passed, result
    out = eval(result.stdout)
    denied = {k: v for k, v in out.items() if k not in ("unshare -Ur", "subprocess", "mountinfo", "status")}
    assert all(v == "EPERM" for v in denied.values()), denied
    assert out["unshare -Ur"] != 0 and out["subprocess"] == "hi\n", out
    assert "Seccomp:\t2" in out["status"], out["status"]
    # The new root is a tmpfs of its own: no host path of the jail in mountinfo.
    mountinfo = out["mountinfo"]
    assert "sfpo-jail" not in mountinfo and tempfile.gettempdir() + "/" not in mountinfo, mountinfo
    root_line = next(line for line in mountinfo.splitlines() if line.split()[4] == "/")
    assert root_line.split()[3] == "/" and "tmpfs" in root_line, root_line


def test_without_libseccomp_the_sandbox_warns_once_and_runs(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # import fails
    monkeypatch.setattr(sandbox_mod, "_warned", {"limits"})
    monkeypatch.setattr(sandbox_mod, "_seccomp_built", [])  # build it again, without the library
    with caplog.at_level(logging.WARNING, logger="sfpo_envs.sandbox"):
        first = Sandbox(timeout_s=5, isolation="limits")
        second = Sandbox(timeout_s=5, isolation="limits")
        result = first.run("def add(a, b):\n    return a + b", ADD_TESTS)
    assert first._seccomp is None and second._seccomp is None
    assert result.passed, result
    warnings = [r for r in caplog.records if "WITHOUT a seccomp filter" in r.getMessage()]
    assert len(warnings) == 1 and "pip install pyseccomp" in warnings[0].getMessage(), caplog.text


# ----- limits -----------------------------------------------------------------------


@needs_namespaces
def test_cpu_time_limit_kills_a_spinning_program():
    result = Sandbox(timeout_s=20, cpu_s=1, isolation="namespaces").run("while True:\n    pass")
    assert not result.passed and not result.timed_out
    assert result.signal in ("SIGKILL", "SIGXCPU") and result.duration_s < 10, result


@needs_namespaces
def test_memory_file_size_disk_and_process_limits(verified_jail):
    sandbox = Sandbox(timeout_s=10, memory_mb=256, file_size_mb=1, disk_mb=4, max_processes=8,
                      isolation="namespaces")
    memory, big_file, full_disk, procs = sandbox.run_batch([
        "x = bytearray(512 * 1024 * 1024)",
        "open('big', 'wb').write(b'x' * 2 * 1024 * 1024)",
        "for i in range(8):\n    open(f'f{i}', 'wb').write(b'x' * 1000 * 1000)",
        "import subprocess\nps = [subprocess.Popen(['sleep', '5']) for _ in range(12)]",
    ])
    assert memory.error == "MemoryError", memory
    assert "File too large" in big_file.error, big_file
    assert "No space left on device" in full_disk.error, full_disk
    assert "Resource temporarily unavailable" in procs.error, procs
    _assert_no_leftovers()


# ----- hostile programs (jail verified first) ---------------------------------------


def _assert_contained(result: RunResult, what: str, limit: float = TIMEOUT) -> None:
    assert not result.passed, (what, result)
    assert result.duration_s < limit + SLACK, (what, result)


@needs_namespaces
def test_hostile_loops_sleep_recursion_memory_and_output(verified_jail):
    attacks = {
        "infinite loop": "while True:\n    pass",
        "sleep forever": "import time\ntime.sleep(10**6)",
        "sleep in a detached child": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(10**6)\n"
            "time.sleep(10**6)"
        ),
        "deep recursion": (
            "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)"
        ),
        "memory bomb": "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))",
        "one huge allocation": "x = 'a' * (10**11)",
        "10 GB of stdout": "import sys\nchunk = 'x' * 2**20\nfor _ in range(10 * 1024):\n    sys.stdout.write(chunk)",
        "10 GB of stderr": "import os\nchunk = b'y' * 2**20\nfor _ in range(10 * 1024):\n    os.write(2, chunk)",
    }
    results = dict(zip(attacks, verified_jail.run_batch(list(attacks.values()))))
    for name, result in results.items():
        _assert_contained(result, name)
    for name in ("infinite loop", "sleep forever", "sleep in a detached child"):
        assert results[name].timed_out, (name, results[name])
    # Stopped by the address-space limit, or by the clock on a busy machine.
    bomb = results["memory bomb"]
    assert bomb.error == "MemoryError" or bomb.timed_out, bomb
    assert results["one huge allocation"].error == "MemoryError"
    out, err = results["10 GB of stdout"], results["10 GB of stderr"]
    cap = verified_jail.max_output_bytes
    assert out.stdout_truncated and len(out.stdout) == cap and set(out.stdout) == {"x"}
    assert err.stderr_truncated and len(err.stderr) == cap
    assert "max_output_bytes" in out.error
    _assert_no_leftovers()


@needs_namespaces
def test_a_detached_child_dies_with_its_run(verified_jail):
    result = verified_jail.run(
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(10**6)\nprint('parent exits')"
    )
    assert result.passed and result.stdout == "parent exits\n", result
    assert result.duration_s < TIMEOUT, result  # the run ends with its main process
    _assert_no_leftovers()


@needs_namespaces
def test_hostile_writes_and_deletes_do_not_reach_the_host(verified_jail, tmp_path):
    tag = secrets.token_hex(6)
    tmp_target = Path(f"/tmp/pwned_{tag}")
    repo_target = REPO / f"pwned_{tag}"
    canary_dir = tmp_path / "canary_dir"
    canary_dir.mkdir()
    canary = canary_dir / "canary.txt"
    canary.write_text("still here")
    # World-writable, so only the jail (not file permissions) protects it.
    canary_dir.chmod(0o777)
    canary.chmod(0o666)
    repo_file = REPO / "setup.cfg"
    attacks = [
        f"open({str(repo_target)!r}, 'w').write('pwned')",
        f"import os\nos.remove({str(canary)!r})",
        f"open({str(canary)!r}, 'w').write('overwritten')",
        f"import os\nos.remove({str(repo_file)!r})",
        "import subprocess\nsubprocess.run(['rm', '-rf', '--no-preserve-root', '/'])\n"
        "import os\nassert os.listdir('/usr/bin') == [], 'rm -rf / failed inside the jail'",
        "open('/etc/passwd', 'a').write('pwned:x:0:0::/:/bin/sh\\n')",
        # Succeeds, in the jail's own /tmp: the host's /tmp and /dev/shm stay untouched.
        f"open({str(tmp_target)!r}, 'w').write('pwned')\nopen('/dev/shm/pwned', 'w').write('x')\n"
        "import os\nprint(sorted(os.listdir('/tmp')))",
    ]
    results = verified_jail.run_batch(attacks)
    for attack, result in zip(attacks[:-1], results[:-1]):
        _assert_contained(result, attack)
    # Writing to its own scratch space works, and it is not the host's /tmp or /dev/shm.
    expected = sorted(["main.py", "pwned", tmp_target.name])
    assert results[-1].passed and results[-1].stdout == f"{expected}\n", results[-1]
    assert not tmp_target.exists() and not repo_target.exists()
    assert not Path("/dev/shm/pwned").exists()
    assert canary.read_text() == "still here"
    assert repo_file.is_file() and "pwned" not in Path("/etc/passwd").read_text()
    _assert_no_leftovers()


@needs_namespaces
def test_secrets_in_env_and_files_are_not_visible(verified_jail, monkeypatch, tmp_path):
    monkeypatch.setenv("SFPO_TEST_SECRET", "hunter2")
    secret_file = tmp_path / "token.txt"
    secret_file.write_text("hunter2")
    secret_file.chmod(0o644)  # readable by anyone on the host: only the jail hides it
    attacks = [
        "import os\nprint(dict(os.environ))",
        "import subprocess\nprint(subprocess.run(['env'], capture_output=True, text=True).stdout)",
        f"print(open({str(secret_file)!r}).read())",
        "print(open('/proc/1/environ', 'rb').read())",
        f"print(open('/proc/{os.getpid()}/environ', 'rb').read())",
        "print(open('/etc/shadow').read())",
        "import os\nprint(os.listdir('/root'))\nprint(os.listdir('/home') if os.path.exists('/home') else None)",
        f"print(open({str(REPO / 'setup.cfg')!r}).read())",
    ]
    results = verified_jail.run_batch(attacks)
    env, env_cmd = results[0], results[1]
    assert env.passed and env_cmd.passed
    for result in results:
        assert "hunter2" not in result.stdout + result.stderr, result
    shown = eval(env.stdout)  # the jail's own environment, printed as a dict literal
    assert set(shown) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_CTYPE", "PWD", "OLDPWD"}, shown
    for result in results[2:6]:
        assert not result.passed, result
    home = results[6]
    assert home.passed and home.stdout.splitlines()[0] in ("[]", "['.pyenv']"), home
    assert not results[7].passed and "FileNotFoundError" in results[7].error


@needs_namespaces
def test_network_is_unreachable(verified_jail):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"\0sfpo-test-{secrets.token_hex(6)}"
    abstract.bind(abstract_name)
    abstract.listen(8)
    abstract.settimeout(0.5)
    try:
        attacks = [
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({abstract_name!r})",
            "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)",
            "import socket\nsocket.getaddrinfo('pypi.org', 443)",
        ]
        results = verified_jail.run_batch(attacks)
        for attack, result in zip(attacks, results):
            _assert_contained(result, attack)
        assert "Network is unreachable" in results[0].error, results[0]
        for sock in (listener, abstract):
            with pytest.raises(socket.timeout):
                sock.accept()  # nothing ever connected
    finally:
        listener.close()
        abstract.close()


# ----- fork bombs and kills: last, after the jail was verified ------------------------


@needs_namespaces
def test_fork_bomb_is_contained(verified_jail):
    bombs = [
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "import subprocess\nsubprocess.run(['bash', '-c', ':(){ :|:& };:'])\nimport time\ntime.sleep(10**6)",
    ]
    start = time.monotonic()
    results = verified_jail.run_batch(bombs)
    for bomb, result in zip(bombs, results):
        _assert_contained(result, bomb)
    assert time.monotonic() - start < TIMEOUT + 2 * SLACK
    _assert_no_leftovers()


@needs_namespaces
def test_killing_the_parent_and_everything_fails(verified_jail):
    canary = subprocess.Popen(["sleep", "120"])
    try:
        me = os.getpid()
        attacks = [
            "import os\nos.kill(os.getppid(), 9)\nimport time\ntime.sleep(10**6)",
            "import os\nos.killpg(0, 9)",
            "import os\nos.kill(-1, 9)",
            "import subprocess\nsubprocess.run(['kill', '-9', '-1'])",
            f"import os\nos.kill({me}, 9)",
            f"import os\nos.kill({canary.pid}, 9)",
            f"import os\nos.kill({os.getppid()}, 9)",
            "import os\nos.kill(1, 9)\nos.kill(1, 15)\nimport time\ntime.sleep(10**6)",
        ]
        # A well-behaved run next to them must be unaffected by its neighbours.
        programs = ["import time\ntime.sleep(1.5)\nprint('survived')", *attacks]
        results = verified_jail.run_batch(programs)
        for attack, result in zip(attacks, results[1:]):
            _assert_contained(result, attack)
        assert results[0].passed and results[0].stdout == "survived\n", results[0]
        assert canary.poll() is None, "the canary process on the host was killed"
        _assert_no_leftovers(known=(canary.pid,))
    finally:
        canary.kill()
        canary.wait()


# ----- output is data; memory the address-space limit does not count ---------------------


def test_a_program_printing_the_old_failure_marker_is_just_a_failed_run(jail_or_fallback):
    """The jail reports its own faults on a pipe the program never holds: any text the
    program prints, or any exit status, is the program's result, never a SandboxError."""
    programs = [
        "import sys\nsys.stderr.write('sfpo-seccomp-failed: Operation not permitted\\n')\nsys.exit(125)",
        "print('sfpo-jail-ready')\nimport os\nos._exit(125)",
    ]
    for result in jail_or_fallback.run_batch(programs):
        assert not result.passed and result.returncode == 125, result
    judged = jail_or_fallback.run(
        "import sys\ndef add(a, b):\n    return a - b\nsys.stderr.write('sfpo-seccomp-failed\\n')\n", ADD_TESTS)
    assert not judged.passed and judged.judged, judged


def test_a_jail_that_cannot_install_its_filter_is_one_clear_error(monkeypatch):
    """The other side of the channel: a real failure of the jail's setup still raises."""
    sandbox = Sandbox(timeout_s=5)
    sandbox.isolation  # probe with the real filter
    monkeypatch.setattr(sandbox, "_seccomp", "00")  # not a BPF program: prctl fails (EINVAL)
    with pytest.raises(SandboxError, match="seccomp filter could not be installed"):
        sandbox.run("print('never runs')")


MEMORY_HOGS = {
    "memfd": "import os\nfds = []\nfor _ in range(150):\n    fd = os.memfd_create('x')\n"
             "    os.ftruncate(fd, 16 << 20)\n    os.write(fd, b'x' * (16 << 20))\n    fds.append(fd)\n",
    "sysv_shm": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "ids = [libc.shmget(0, ctypes.c_size_t(600 << 20), 0o1666) for _ in range(4)]\n"
                "assert all(i >= 0 for i in ids), ctypes.get_errno()\n",
    "msg_queue": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nassert libc.msgget(0, 0o1666) >= 0, ctypes.get_errno()\n",
}


def _shared_memory_mb() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(fields["Shmem"].split()[0]) / 1024


def _sysv_segments() -> int:
    return len(Path("/proc/sysvipc/shm").read_text().splitlines()) - 1


@pytest.mark.parametrize("mode", ["namespaces", "uid+limits"])
def test_memfd_and_shared_memory_are_denied_and_leave_nothing(mode):
    if mode == "namespaces" and not NAMESPACES:
        pytest.skip("Linux namespaces are not available here")
    if os.geteuid() != 0:
        pytest.skip("uid+limits needs root")
    sandbox_mod._warned.add(mode)
    sandbox = Sandbox(timeout_s=TIMEOUT * 2, isolation=mode)
    if sandbox._seccomp is None:
        pytest.skip("no seccomp filter: pyseccomp or libseccomp is missing (the sandbox warned)")
    shmem, segments = _shared_memory_mb(), _sysv_segments()
    results = dict(zip(MEMORY_HOGS, sandbox.run_batch(list(MEMORY_HOGS.values()))))
    for name, result in results.items():
        assert not result.passed and ("PermissionError" in result.error or "AssertionError: 1" in result.error), (name, result)
    # Other processes on the host may allocate shared memory meanwhile: a loose bound.
    assert _shared_memory_mb() - shmem < 200 and _sysv_segments() <= segments
    judged = sandbox.run(MEMORY_HOGS["memfd"] + "def add(a, b):\n    return a + b\n", ADD_TESTS)
    assert not judged.passed, judged
    _assert_no_leftovers()


def test_a_slow_probe_never_picks_a_weaker_mode(monkeypatch):
    """The probe has its own time limit: a tight `timeout_s` does not weaken isolation, and a
    probe that keeps running out of time is an error, not a silent fallback."""
    monkeypatch.setattr(sandbox_mod, "_probed", {})
    tight = Sandbox(timeout_s=0.04)
    assert tight.isolation == ("namespaces" if NAMESPACES else tight.isolation)
    if os.geteuid() != 0:
        return
    monkeypatch.setattr(sandbox_mod, "_probed", {})
    monkeypatch.setattr(sandbox_mod, "_PROBE_TIMEOUT_S", 0.001)
    monkeypatch.setattr(sandbox_mod, "_PROBE_ATTEMPTS", 2)
    with pytest.raises(SandboxError, match="probe of isolation mode .* timed out 2 times"):
        Sandbox(timeout_s=0.001).isolation

"""The two Python processes of a sandbox run: the untrusted program, and the trusted judge.

This file runs *inside* the jail, imported from a copy next to its .pyc (see
sandbox._runtime_dir) as ``python -I -B [-S] -c <stub> <dir> <role> ...``; it uses only
the standard library (the jail has nothing else) and nothing from sfpo_envs.

Why two processes: a program and its tests used to run in one interpreter, and anything
the test code could do after the tests (print a token, write to a channel), the program
could do before them (read the token from the program text, memory or /proc; exit 0
early; jump over the asserts with a trace function; patch the code). No secret or channel
inside that interpreter can be kept from the program. So the tests run elsewhere:

* role ``program`` (uid U): runs the completion as ``__main__`` from /tmp/main.py, tells
  the judge which names it defined, then answers calls: ``{"op": "call", "name", "args",
  "kwargs"}`` -> ``{"ok": true, "value"}`` or ``{"ok": false, "type", "message"}``.
* role ``judge`` (uid J != U): reads the tests (which the program never sees), runs them
  with every name they do not define themselves bound to a proxy that calls the program,
  and writes ``{"passed", "error"}`` to a pipe only the judge holds. Builtins the tests
  use stay the judge's own, unless the name is an entry point the tests ask for. The program cannot
  write to that pipe, signal or trace the judge (another uid, no capabilities, seccomp),
  and sends the judge nothing but JSON, which the judge decodes into plain builtin values
  (never into objects with code, so no ``__eq__`` that says yes to everything).
* role ``plain``: runs /tmp/main.py alone (``Sandbox.run`` without tests).

Every role first installs the seccomp filter given as hex (see sandbox._seccomp_filter),
reports a failure on the jail's status pipe and closes that pipe before anything else runs.
"""

import os
import sys

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def install_seccomp(bpf_hex, status_fd):
    """Load a classic-BPF seccomp program (exported by libseccomp in the trainer).

    A failure is reported on ``status_fd``, a pipe to the trainer that every role closes
    before any untrusted code runs: the program can print anything, but never a message
    from the jail.
    """
    if not bpf_hex:
        return
    import ctypes

    program = bytes.fromhex(bpf_hex)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if (libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0
            or libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0):
        err = ctypes.get_errno()
        os.write(status_fd, f"the seccomp filter could not be installed: {os.strerror(err)}".encode())
        os._exit(125)


# ----- JSON without the json package ------------------------------------------------
# ``import json`` pulls in ``re`` and ``enum``: 9 ms of CPU per process, twice per run. The
# C scanner and encoder it wraps are all a one-line protocol needs.


def _json_codec():
    try:
        import _json

        class Context:
            strict = True
            object_hook = object_pairs_hook = None
            parse_float, parse_int = float, int
            parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__
            memo = {}

        scan = _json.make_scanner(Context())
        encode = _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ":", ",", False, False, True)

        def loads(text):
            try:
                value, end = scan(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                raise ValueError("not one JSON value")
            return value

        def dumps(value):
            return "".join(encode(value, 0))

        dumps(["x", 1.5, {"k": None}])  # an interpreter whose _json differs: use json
        return loads, dumps
    except (ImportError, AttributeError, TypeError):
        import json

        return json.loads, lambda value: json.dumps(value, separators=(",", ":"))


json_loads, json_dumps = _json_codec()


# ----- values between the processes: JSON with tags for what JSON lacks ---------------
# The judge decodes only into exact builtin types; the program side encodes what a
# solution can reasonably return and refuses the rest with a clear message.

_TAG = "$sfpo"
_ITER_CAP = 1_000_000  # items taken from a returned iterator or generator
_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_BIG_INT = 1 << 256


class EncodeError(TypeError):
    pass


def encode(value, depth=0):
    if depth > 200:
        raise EncodeError("value nested more than 200 levels deep")
    t = type(value)
    if t is int and not -_BIG_INT < value < _BIG_INT:
        # In hex: decimal conversions of huge ints are capped (sys.int_info), hex is not.
        return {_TAG: "int", "v": hex(value)}
    if value is None or t is bool or t is str or t is int or t is float:
        return value
    if t is list:
        return [encode(v, depth + 1) for v in value]
    if t is tuple:
        return {_TAG: "tuple", "v": [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):  # dict, Counter, OrderedDict, defaultdict: compared as dicts
        return {_TAG: "dict", "v": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]}
    if isinstance(value, (set, frozenset)):
        kind = "frozenset" if isinstance(value, frozenset) else "set"
        return {_TAG: kind, "v": [encode(v, depth + 1) for v in value]}
    if isinstance(value, (bytes, bytearray)):
        return {_TAG: "bytes", "v": bytes(value).decode("latin-1")}
    if t is complex:
        return {_TAG: "complex", "v": [value.real, value.imag]}
    if t is range:
        return {_TAG: "range", "v": [value.start, value.stop, value.step]}
    if t in _VIEWS[:2]:
        return {_TAG: "keys" if t is _VIEWS[0] else "values", "v": [encode(v, depth + 1) for v in value]}
    if t is _VIEWS[2]:
        return {_TAG: "items", "v": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value]}
    if isinstance(value, int):  # IntEnum, other int subclasses: their int value
        return encode(int.__index__(value), depth)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, tuple):  # namedtuple
        return {_TAG: "tuple", "v": [encode(v, depth + 1) for v in value]}
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if hasattr(t, "__next__") and hasattr(t, "__iter__"):  # generator, map, zip, ...
        items = []
        for item in value:
            if len(items) >= _ITER_CAP:
                raise EncodeError(f"returned an iterator with more than {_ITER_CAP} items")
            items.append(encode(item, depth + 1))
        return {_TAG: "iter", "v": items}
    raise EncodeError(
        f"a {t.__module__}.{t.__qualname__} object cannot pass between the program and its "
        "tests, which exchange plain values only (None, bool, int, float, complex, str, bytes, list, tuple, dict, set, "
        "range, iterators of those)"
    )


def _hashable(value):
    hash(value)  # TypeError for a list or dict key: the reply is invalid
    return value


def decode(obj):
    """JSON -> exact builtin values (the judge's side: never builds objects with code)."""
    t = type(obj)
    if obj is None or t in (bool, int, float, str):
        return obj
    if t is list:
        return [decode(v) for v in obj]
    if t is not dict or set(obj) != {_TAG, "v"}:
        raise ValueError(f"not a value: {str(obj)[:80]}")
    kind, raw = obj[_TAG], obj["v"]
    if kind == "bytes" and type(raw) is str:
        return raw.encode("latin-1")
    if kind == "int" and type(raw) is str:
        return int(raw, 16)
    if kind == "complex" and type(raw) is list and len(raw) == 2:
        return complex(float(raw[0]), float(raw[1]))
    if kind == "range" and type(raw) is list and len(raw) == 3 and all(type(x) is int for x in raw):
        return range(*raw)
    if type(raw) is not list:
        raise ValueError(f"not a value: {str(obj)[:80]}")
    if kind == "tuple":
        return tuple(decode(v) for v in raw)
    if kind == "dict":
        return {_hashable(decode(k)): decode(v) for k, v in raw}
    if kind == "set":
        return {_hashable(decode(v)) for v in raw}
    if kind == "frozenset":
        return frozenset(_hashable(decode(v)) for v in raw)
    if kind == "iter":
        return iter([decode(v) for v in raw])
    if kind == "keys":
        return dict.fromkeys(_hashable(decode(v)) for v in raw).keys()
    if kind == "values":
        return dict(enumerate(decode(v) for v in raw)).values()
    if kind == "items":
        return dict((_hashable(decode(k)), decode(v)) for k, v in raw).items()
    raise ValueError(f"unknown value tag {kind!r}")


def _one_line(exc):
    import traceback

    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return line.removeprefix(__name__ + ".")[:300]  # "ProgramError: ...", not "sfpo_judge.ProgramError"


# ----- role "program" ------------------------------------------------------------------


def _load_main(site_packages):
    """Run /tmp/main.py as ``__main__`` (as ``python main.py`` would)."""
    import types

    if not site_packages:
        import site

        site.setquit()  # exit()/quit(), which the skipped site module would add
    module = types.ModuleType("__main__")
    module.__file__ = "main.py"
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    sys.argv = ["main.py"]
    with open("main.py", "rb") as f:
        source = f.read()
    exec(compile(source, "main.py", "exec"), module.__dict__)
    return module


def run_plain(site_packages):
    _load_main(site_packages)


def serve_program(site_packages, calls_fd, replies_fd):
    # Before any of the program's code: keep only stdio and the two call pipes.
    os.closerange(3, calls_fd)
    os.closerange(calls_fd + 1, replies_fd)
    os.closerange(replies_fd + 1, 1 << 20)
    calls = os.fdopen(calls_fd, "rb")
    replies = os.fdopen(replies_fd, "wb")
    dumps, loads, exit_now, flush = json_dumps, json_loads, os._exit, sys.stdout.flush

    def send(message):
        replies.write(dumps(message).encode("utf-8", "surrogatepass") + b"\n")
        replies.flush()

    try:
        module = _load_main(site_packages)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        send({"loaded": False, "error": f"exited with status {code} before its tests finished (e.g. sys.exit or exit())"})
        raise
    except BaseException as exc:
        send({"loaded": False, "error": _one_line(exc)})
        raise
    names = {}
    for name, value in list(module.__dict__.items()):
        if name.startswith("__") or isinstance(value, type(sys)):
            continue
        names[name] = "callable" if callable(value) else "value"
    send({"loaded": True, "names": names})
    namespace = module.__dict__
    for line in calls:
        try:
            request = loads(line.decode("utf-8", "surrogatepass").rstrip("\n"))
            value = namespace[request["name"]]
            if request["op"] == "call":
                args = decode(request["args"])
                kwargs = {k: decode(v) for k, v in request["kwargs"].items()}
                value = value(*args, **kwargs)
            reply = {"ok": True, "value": encode(value)}
        except BaseException as exc:  # the judge raises it in the tests
            if isinstance(exc, SystemExit):
                reply = {"ok": False, "type": "SystemExit", "message": f"the program called exit({exc.code!r})"}
            else:
                reply = {"ok": False, "type": type(exc).__name__, "message": str(exc)[:2000]}
        try:
            send(reply)
        except (BrokenPipeError, ValueError):
            break
    try:
        flush()
    finally:
        exit_now(0)  # threads the program left running do not keep the run alive


# ----- role "judge" --------------------------------------------------------------------


class ProgramError(Exception):
    """The program failed in a way that is not one of Python's own exceptions."""


class ProgramGone(Exception):
    """The program ended (or broke the protocol) while the tests were still running."""


def judge(verdict_fd, calls_fd, replies_fd, entry_points):
    import builtins

    calls = os.fdopen(calls_fd, "wb")
    replies = os.fdopen(replies_fd, "rb")
    verdict = os.fdopen(verdict_fd, "wb")

    def report(passed, error):
        verdict.write(json_dumps({"passed": passed, "error": error}).encode() + b"\n")
        verdict.flush()
        os._exit(0)

    def receive():
        line = replies.readline()
        if not line.endswith(b"\n"):
            raise ProgramGone("the program ended before its tests finished")
        try:
            message = json_loads(line[:-1].decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError):
            raise ProgramGone("the program wrote something other than a reply to the test channel") from None
        if type(message) is not dict:
            raise ProgramGone("the program wrote something other than a reply to the test channel")
        return message

    def request(op, name, args=(), kwargs=None):
        try:
            calls.write(json_dumps({"op": op, "name": name, "args": encode(list(args)),
                                    "kwargs": {k: encode(v) for k, v in (kwargs or {}).items()}}).encode("utf-8", "surrogatepass") + b"\n")
            calls.flush()
        except BrokenPipeError:
            raise ProgramGone("the program ended before its tests finished") from None
        reply = receive()
        if reply.get("ok") is True:
            try:
                return decode(reply.get("value"))
            except (ValueError, TypeError, RecursionError) as exc:
                raise ProgramGone(f"the program sent an invalid value: {exc}") from None
        kind, message = str(reply.get("type"))[:100], str(reply.get("message"))[:2000]
        cls = getattr(builtins, kind, None)
        # Python's own exceptions keep their type (a test may expect a ValueError), except
        # those that steer control flow instead of reporting an error.
        if (isinstance(cls, type) and issubclass(cls, Exception)
                and not issubclass(cls, (StopIteration, StopAsyncIteration))):
            raise cls(message)
        raise ProgramError(f"{kind}: {message}")

    class Remote:
        """A function of the program: calling it runs it there, on copies of the arguments."""

        def __init__(self, name):
            self.__name__ = self.__qualname__ = name

        def __call__(self, *args, **kwargs):
            return request("call", self.__name__, args, kwargs)

        def __repr__(self):
            return f"<function {self.__name__} of the program>"

    program_names = {}

    class Namespace(dict):
        """The tests' globals: names they do not define come from the program, except
        builtins (a program's own ``abs`` or ``len`` must not change what the tests
        check), unless the name is an entry point (a task may ask for a ``sum``)."""

        def __missing__(self, name):
            kind = program_names.get(name)
            if kind is None or (name in builtins.__dict__ and name not in entry_points):
                raise KeyError(name)
            value = Remote(name) if kind == "callable" else request("get", name)
            self[name] = value
            return value

    try:
        with os.fdopen(0, "rb") as f:  # the tests (setup code, then test code), on stdin
            tests = f.read().decode("utf-8", "surrogateescape")
        hello = receive()
        if hello.get("loaded") is not True:
            report(False, str(hello.get("error") or "the program failed to load")[:300])
        names = hello.get("names")
        if type(names) is not dict:
            raise ProgramGone("the program wrote something other than a reply to the test channel")
        program_names.update((str(k), str(v)) for k, v in names.items())
        namespace = Namespace(__name__="__main__", __builtins__=builtins)
        exec(compile(tests, "tests.py", "exec"), namespace)
    except ProgramGone as exc:
        report(False, str(exc)[:300])
    except BaseException as exc:  # the tests failed (or the judge ran out of something)
        report(False, _one_line(exc))
    report(True, None)


def main(argv):
    role, bpf_hex, status_fd, *args = argv
    install_seccomp(bpf_hex, int(status_fd))
    os.close(int(status_fd))  # setup is done: nothing the program runs can speak for the jail
    if role == "plain":
        run_plain(args[0] == "site")
    elif role == "program":
        serve_program(args[0] == "site", int(args[1]), int(args[2]))
    elif role == "judge":
        judge(int(args[0]), int(args[1]), int(args[2]), set(filter(None, args[3].split(","))))
    else:
        raise SystemExit(f"unknown role {role!r}")

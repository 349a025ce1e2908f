"""The model cache and name resolver that every config validation calls.

``resolve_model(name)`` turns the embedded default's name, ``sfpo-tiny-arithmetic``, into
the folder of its cached build (built on first use by the recipe in ``tiny_model.py``),
and the name of a fetched pretrained model (``models.py``) into its cached folder; any
other name or path is returned unchanged. Importing this module loads no torch: the
recipe is imported only when the tiny model is asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

TINY_MODEL_NAME = "sfpo-tiny-arithmetic"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SFPO_RLLIB_CACHE") or Path.home() / ".cache" / "sfpo_rllib")


@contextlib.contextmanager
def file_lock(path: Path):
    """Exclusive lock so racing processes build once (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename below still keeps the cache consistent
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def say(message: str) -> None:
    """A progress line for the user: the build runs before any progress bar of the run."""
    print(f"sfpo-rllib: {message}", file=sys.stderr, flush=True)


def _say_built(report: dict, folder: Path) -> None:
    """The build's own measured figures, as recorded in warm_start.json."""
    settings = report.get("settings", {})
    samples, accuracy = settings.get("eval_samples"), report.get("test_accuracy_t1")
    pass_at = report.get(f"test_pass_at_{samples}")
    if accuracy is None or pass_at is None:
        say(f"built {TINY_MODEL_NAME} ({folder / 'warm_start.json'})")
        return
    say(f"built {TINY_MODEL_NAME} in {report.get('build_seconds', 0):.0f} s: test accuracy at temperature 1 "
         f"{100 * accuracy:.1f}%, pass@{samples} {100 * pass_at:.1f}% ({settings.get('eval_problems')} test problems; "
         f"recorded in {folder / 'warm_start.json'})")


def ensure_tiny_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached tiny model's folder, built on first use.

    Cached under ``cache_dir``, else ``$SFPO_RLLIB_CACHE``, else ``~/.cache/sfpo_rllib``, in
    ``<name>-<hash of settings and library versions>/``. Built into a temporary folder and
    renamed into place, so a half-written model is never seen; a file lock makes a second
    process wait for the first instead of building again.
    """
    from sfpo_rllib import tiny_model  # the recipe (torch, transformers): only when the tiny model is asked for

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"{TINY_MODEL_NAME}-{tiny_model.cache_key(tiny_model.TinyModelSettings())}"
    if (final / "warm_start.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    lock = root / f".{final.name}.lock"
    if lock.exists() and not (final / "warm_start.json").is_file():
        say(f"waiting for another process that may be building {TINY_MODEL_NAME} into {final}")
    with file_lock(lock):
        if (final / "warm_start.json").is_file():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
        try:
            say(f"building the embedded model {TINY_MODEL_NAME} (first use only; about 1.5-3 minutes on 2 CPU "
                 f"cores: a {tiny_model.TinyModelSettings().steps}-step warm start, then calibration and a test) into {final}")
            tiny_model.build_tiny_model(tmp)
            _say_built(json.loads((tmp / "warm_start.json").read_text()), final)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is shared
            try:
                os.rename(tmp, final)  # atomic on one filesystem
            except OSError:
                if not (final / "warm_start.json").is_file():
                    raise
                # Lost a race with a process that did not take the lock: keep its copy.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model(name_or_path: str, dtype: str = "float32") -> str:
    """The local folder a run loads for ``name_or_path``.

    ``TINY_MODEL_NAME``: its cached build (built on first use). A name in
    ``models.PRETRAINED_MODELS``: its fetched folder's variant for ``dtype`` (ValueError, one
    line, when not fetched: runs never download). Any other value is returned unchanged.
    """
    if name_or_path == TINY_MODEL_NAME:
        return str(ensure_tiny_model())
    from sfpo_rllib import models  # the registry (no torch)

    if isinstance(name_or_path, str) and name_or_path in models.PRETRAINED_MODELS:
        path = models.fetched_path(name_or_path, dtype)
        if path is None:
            raise ValueError(models.not_fetched_message(name_or_path))
        return str(path)
    return name_or_path

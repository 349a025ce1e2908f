"""Loading users' data: every benchmark file, file formats, layouts, columns=, bad rows."""

from __future__ import annotations

import gzip
import json
import logging
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sfpo_envs.datasets import LAYOUTS, last_boxed, load_examples

from conftest import BENCHMARKS as BENCH, needs_bench

# file -> (layout auto-detection picks, rows, kind)
BENCHMARKS = {
    "math500_test.jsonl": ("math", 500, "math"),
    "aime24_test.jsonl": ("math", 30, "math"),
    "aime25_test.jsonl": ("math", 30, "math"),
    "amc23_test.jsonl": ("amc", 40, "math"),
    "minerva_math_test.jsonl": ("math", 272, "math"),
    "olympiadbench_test.jsonl": ("olympiadbench", 675, "math"),
    "gsm8k_test.jsonl": ("gsm8k", 1319, "math"),
    "gsm8k_train.jsonl": ("gsm8k", 7473, "math"),
    "humaneval.jsonl.gz": ("humaneval", 164, "code"),
    "mbpp_sanitized_test.jsonl": ("mbpp", 257, "code"),
}
# The layout named after each benchmark must read it the same way auto-detection does.
NAMED = {
    "aime24_test.jsonl": "aime",
    "aime25_test.jsonl": "aime",
    "minerva_math_test.jsonl": "minerva",
}

MATH_KEYS = {"question", "answer", "source", "row", "meta"}
CODE_KEYS = {"question", "test_code", "entry_point", "setup_code", "reference", "source", "row", "meta"}


def by_row(loaded):
    return {e["row"]: e for e in loaded.examples}


@needs_bench
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_loads(name):
    layout, rows, kind = BENCHMARKS[name]
    loaded = load_examples(BENCH / name, split="test")
    assert (loaded.layout, len(loaded.examples), loaded.kind, loaded.num_skipped) == (layout, rows, kind, 0)
    keys = MATH_KEYS if kind == "math" else CODE_KEYS
    for example in loaded.examples:
        assert set(example) == keys
        assert example["source"] == name and isinstance(example["meta"], dict)
        assert isinstance(example["question"], str) and example["question"].strip()
        if kind == "math":
            assert isinstance(example["answer"], str) and example["answer"].strip()
            assert "$" not in example["answer"].replace("\\$", "")
    assert [e["row"] for e in loaded.examples] == list(range(1, rows + 1))
    named = NAMED.get(name, layout)
    again = load_examples(BENCH / name, layout=named)
    assert [(e["question"], e.get("answer"), e.get("test_code")) for e in again.examples] == [
        (e["question"], e.get("answer"), e.get("test_code")) for e in loaded.examples
    ]


@needs_bench
def test_benchmark_answers_are_normalized():
    amc = by_row(load_examples(BENCH / "amc23_test.jsonl"))
    assert amc[1]["answer"] == "27"  # the file stores 27.0
    assert amc[16]["answer"] == "-1"
    aime = by_row(load_examples(BENCH / "aime24_test.jsonl", layout="aime"))
    assert aime[8]["answer"] == "025"  # kept as written; the verifier reads it as 25
    gsm = load_examples(BENCH / "gsm8k_test.jsonl")
    assert gsm.examples[0]["answer"] == "18"
    assert not any("," in e["answer"] for e in gsm.examples)  # '1,000' -> '1000'
    assert gsm.examples[0]["meta"]["solution"].startswith("Janet sells")
    minerva = by_row(load_examples(BENCH / "minerva_math_test.jsonl"))
    assert minerva[1]["answer"] == "1.6"  # from \boxed{1.6} in the solution
    olympiad = [e["answer"] for e in load_examples(BENCH / "olympiadbench_test.jsonl").examples]
    assert "69,84" in olympiad  # '$69$,$84$'
    assert "(-\\infty, 0) \\cup\\{1\\}" in olympiad  # '$(-\\infty, 0) \\cup\\{1\\}$.'
    math500 = load_examples(BENCH / "math500_test.jsonl").examples
    assert math500[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert math500[0]["meta"]["subject"] == "Precalculus"


@needs_bench
def test_code_benchmarks_follow_the_code_schema():
    humaneval = load_examples(BENCH / "humaneval.jsonl.gz").examples[0]
    assert humaneval["entry_point"] == "has_close_elements"
    assert humaneval["test_code"].endswith("\ncheck(has_close_elements)\n")
    assert humaneval["setup_code"] == "from typing import List\n"
    assert humaneval["reference"].startswith(humaneval["question"])
    assert humaneval["meta"]["task_id"] == "HumanEval/0"
    mbpp = load_examples(BENCH / "mbpp_sanitized_test.jsonl").examples
    assert mbpp[0]["entry_point"] == "remove_Occ"
    assert mbpp[0]["test_code"].startswith('assert remove_Occ("hello","l") == "heo"')
    assert 'assert remove_Occ("hello","l")' in mbpp[0]["question"]
    assert all(e["entry_point"] for e in mbpp)
    with_imports = next(e for e in mbpp if e["meta"].get("code_header") and "import" in e["test_code"])
    assert with_imports["test_code"].splitlines()[0].startswith(("import", "from"))
    # The reference program passes its own tests, and a wrong one fails them.
    namespace: dict = {}
    exec(humaneval["setup_code"] + humaneval["reference"] + "\n" + humaneval["test_code"], namespace)
    with pytest.raises(AssertionError):
        exec(humaneval["setup_code"] + "def has_close_elements(n, t):\n    return False\n" + humaneval["test_code"], {})


# ----- formats ------------------------------------------------------------------------

ROWS = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": 4}]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


def test_jsonl_json_gz_and_list_inputs(tmp_path):
    expected = [("1+1?", "2"), ("2+2?", "4")]
    jsonl = write_jsonl(tmp_path / "a.jsonl", ROWS)
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": ROWS}))
    for data in (jsonl, gz, tmp_path / "list.json", tmp_path / "wrapped.json", str(jsonl), ROWS):
        loaded = load_examples(data)
        assert [(e["question"], e["answer"]) for e in loaded.examples] == expected, data
        assert loaded.layout == "math"


def test_directory_picks_the_split_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    pq.write_table(pa.Table.from_pylist([{"question": "3+3?", "answer": "6"}]), tmp_path / "test.parquet")
    assert len(load_examples(tmp_path, split="train").examples) == 2
    assert load_examples(tmp_path, split="test").examples[0]["answer"] == "6"
    shards = tmp_path / "sharded" / "data"
    shards.mkdir(parents=True)
    for i in range(2):
        pq.write_table(pa.Table.from_pylist([ROWS[i]]), shards / f"train-0000{i}-of-00002.parquet")
    assert [e["answer"] for e in load_examples(tmp_path / "sharded").examples] == ["2", "4"]
    with pytest.raises(ValueError, match=r"no file for split 'validation'.*test.parquet, train.jsonl"):
        load_examples(tmp_path, split="validation")


def test_missing_path_and_unsupported_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an existing file"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match=r"unsupported extension; supported: \.jsonl"):
        load_examples(tmp_path / "data.csv")


# ----- layouts and columns= -----------------------------------------------------------


def test_verl_parquet_round_trips(tmp_path):
    rows = [
        {
            "data_source": "openai/gsm8k",
            "prompt": [
                {"role": "system", "content": "You are a careful solver."},
                {"role": "user", "content": "What is 6*7? Let's think step by step and output the final answer after '####'."},
            ],
            "ability": "math",
            "reward_model": {"ground_truth": "42", "style": "rule"},
            "extra_info": {"split": "train", "index": 0},
        },
        {
            "data_source": "DigitalLearningGmbH/MATH-lighteval",
            "prompt": [{"role": "user", "content": "Simplify 2/4."}],
            "ability": "math",
            "reward_model": {"ground_truth": "\\frac{1}{2}", "style": "rule"},
            "extra_info": {"split": "train", "index": 1},
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    loaded = load_examples(tmp_path, split="train")
    assert loaded.layout == "verl"
    first, second = loaded.examples
    assert first["question"] == rows[0]["prompt"][1]["content"]
    assert (first["answer"], second["answer"]) == ("42", "\\frac{1}{2}")
    assert first["meta"]["messages"] == rows[0]["prompt"]
    assert first["meta"]["data_source"] == "openai/gsm8k"
    assert first["meta"]["extra_info"] == {"split": "train", "index": 0}
    assert first["meta"]["style"] == "rule"
    assert (first["source"], first["row"], second["row"]) == ("train.parquet", 1, 2)


def test_verl_bad_ground_truth_is_a_bad_row(tmp_path):
    row = {"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": ["1", "2"]}}
    with pytest.raises(ValueError, match=r"<list>, row 1: reward_model.ground_truth is a list of 2"):
        load_examples([row])
    with pytest.raises(ValueError, match="no message with role 'user'"):
        load_examples([{**row, "prompt": [{"role": "system", "content": "s"}]}], layout="verl")


def test_columns_mapping(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"q": "1+1?", "a": 2, "level": 1}])
    loaded = load_examples(path, columns={"question": "q", "answer": "a"})
    assert loaded.layout == "math"
    assert loaded.examples[0] == {
        "question": "1+1?", "answer": "2", "source": "mine.jsonl", "row": 1, "meta": {"level": 1}
    }
    # A mapping into a named layout: GSM8K-style answers under other names.
    gsm = write_jsonl(tmp_path / "gsm.jsonl", [{"prob": "q?", "sol": "2+2=4\n#### 4"}])
    assert load_examples(gsm, layout="gsm8k", columns={"question": "prob", "answer": "sol"}).examples[0]["answer"] == "4"
    with pytest.raises(ValueError, match=r"mine.jsonl, row 1: column\(s\) \['answer_text'\] named in columns="):
        load_examples(path, columns={"question": "q", "answer": "answer_text"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['gold'\].*reads: question, answer"):
        load_examples(path, layout="gsm8k", columns={"gold": "a"})
    with pytest.raises(ValueError, match="must map our field names"):
        load_examples(path, columns=["q", "a"])


def test_code_columns_mapping():
    rows = [{"task": "Write f.", "tests": "assert f() == 1\n", "name": "f"}]
    example = load_examples(rows, columns={"question": "task", "test_code": "tests", "entry_point": "name"}).examples[0]
    assert example["test_code"] == "assert f() == 1\n" and example["entry_point"] == "f"
    assert example["setup_code"] == "" and example["reference"] is None


def test_unknown_layout_lists_valid_names():
    with pytest.raises(ValueError, match=r"`layout` \('gsm9k'\) is not a known layout; valid: auto, math, gsm8k") as err:
        load_examples(ROWS, layout="gsm9k")
    for name in LAYOUTS:
        assert name in str(err.value)


def test_undetectable_layout_says_what_to_do():
    with pytest.raises(ValueError, match=r"Cannot tell the layout of <list> from its columns \(a, q\)\. Name one with layout="):
        load_examples([{"q": "x", "a": "y"}])


def test_bad_options():
    with pytest.raises(ValueError, match="`on_bad_row` \\('ignore'\\) must be 'error'"):
        load_examples(ROWS, on_bad_row="ignore")
    with pytest.raises(ValueError, match="`split`"):
        load_examples(ROWS, split="")
    with pytest.raises(TypeError, match="`data` must be a path"):
        load_examples(42)


def test_last_boxed():
    assert last_boxed("so \\boxed{1} then \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("no box") is None and last_boxed("\\boxed{unclosed") is None


# ----- bad rows -----------------------------------------------------------------------


def bad_file(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"question": "ok?", "answer": "1"},
            {"question": "no answer here"},  # row 2: missing field
            '{"question": "broken", ',  # row 3: bad JSON
            {"question": "list?", "answer": ["1", "2"]},  # row 4: wrong type
            "",  # a blank line is no row
            "[1, 2]",  # row 6: not an object
            {"question": "fine?", "answer": "2"},
        ],
    )


@pytest.mark.parametrize(
    "row, rule",
    [
        (2, r"field 'answer' \(or a 'solution' with a \\boxed\{\.\.\.\} final answer\) is missing"),
        (3, r"line is not valid JSON"),
        (4, r"answer field 'answer' must be a string or a number, got list"),
        (6, r"line is a JSON list, not an object"),
    ],
)
def test_bad_row_error_names_file_row_and_rule(tmp_path, row, rule):
    path = bad_file(tmp_path)
    lines = path.read_text().splitlines()
    # Keep the good first row and the bad row under test, blank the others (rows keep their numbers).
    path.write_text("".join((l if i + 1 in (1, row) else "") + "\n" for i, l in enumerate(lines)))
    with pytest.raises(ValueError, match=rf"bad.jsonl, row {row}: {rule}.*on_bad_row='skip'"):
        load_examples(path)


def test_bad_rows_skipped_are_counted_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sfpo_envs.datasets"):
        loaded = load_examples(bad_file(tmp_path), on_bad_row="skip")
    assert [e["row"] for e in loaded.examples] == [1, 7]
    assert [s.row for s in loaded.skipped] == [2, 3, 4, 6]
    assert loaded.num_skipped == 4
    assert "not valid JSON" in loaded.skipped[1].reason
    assert str(loaded.skipped[0]).startswith(f"{tmp_path / 'bad.jsonl'}, row 2: field 'answer'")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Skipped 4 bad row(s)" in warnings[0].getMessage()


def test_layout_rules_are_bad_rows():
    cases = [
        ("gsm8k", {"question": "q", "answer": "no final"}, "no '#### <number>' final answer"),
        ("gsm8k", {"question": "q", "answer": "x\n#### many"}, "after '####' is 'many', not a number"),
        ("aime", {"problem": "q", "answer": "1.5"}, "AIME answers are integers 0..999"),
        ("amc", {"problem": "q", "answer": "C"}, "AMC answers are numbers"),
        ("minerva", {"problem": "q", "solution": "no box"}, "holds no \\\\boxed"),
        ("math", {"problem": "q", "answer": float("nan")}, "not a finite number"),
        ("math", {"problem": 3, "answer": "1"}, "field 'problem' must be a string, got int"),
        ("olympiadbench", {"question": "q", "final_answer": [1]}, "non-empty list of strings"),
        ("mbpp", {"prompt": "p", "code": "def f(): pass", "test_list": []}, "'test_list' is empty"),
    ]
    for layout, row, rule in cases:
        with pytest.raises(ValueError, match=rf"<list>, row 1: .*{rule}"):
            load_examples([row], layout=layout)


# ----- Hugging Face hub names ---------------------------------------------------------


def test_hub_name_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"needs the `datasets` package: `pip install datasets`"):
        load_examples("hf:openai/gsm8k:main", split="test")


def test_hub_name_through_datasets(monkeypatch):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        if name == "offline/nothing":
            raise ConnectionError("Couldn't reach the Hugging Face Hub")
        return [{"question": "q", "answer": "work\n#### 1,234"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    loaded = load_examples("hf:openai/gsm8k:main", split="test")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert loaded.layout == "gsm8k" and loaded.examples[0]["answer"] == "1234"
    assert (loaded.examples[0]["source"], loaded.examples[0]["row"]) == ("hf:openai/gsm8k:main/test", 1)
    with pytest.raises(RuntimeError, match=r"could not load split 'train'.*ConnectionError.*pass a local path"):
        load_examples("hf:offline/nothing", split="train")


def test_unreadable_files(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes(b'{"question": "caf\xe9?", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"latin.jsonl, row 1: line is not valid UTF-8"):
        load_examples(tmp_path / "latin.jsonl")
    (tmp_path / "broken.json").write_text('[{"question": "q", ')
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON"):
        load_examples(tmp_path / "broken.json")
    (tmp_path / "scalar.json").write_text('"just a string"')
    with pytest.raises(ValueError, match=r"must hold a list of objects"):
        load_examples(tmp_path / "scalar.json")
    (tmp_path / "cut.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"cut.parquet could not be read as parquet"):
        load_examples(tmp_path / "cut.parquet")

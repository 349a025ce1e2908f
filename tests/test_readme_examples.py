"""Every fenced code block in README.md runs as written, or its marker says how it is run or
why it cannot run here (.ci/readme.py; docs/development.md, "The README's examples").

A runner below runs the block under its ID. CLI commands run in-process; where the marker says
so, at small sizes merged into their `--config` (SMALL) and with fewer iterations.
"""

import importlib.util
import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

from sfpo_rllib.cli import main
from sfpo_rllib.run_logger import read_metrics

REPO = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("readme_examples", REPO / ".ci" / "readme.py")
readme = sys.modules["readme_examples"] = importlib.util.module_from_spec(_spec)  # dataclasses need it
_spec.loader.exec_module(readme)

# Where CI runs each `ci` block: the file must name the block.
CI_RUNNERS = {"quickstart-train": ".ci/quickstart.py", "quickstart-tests": ".ci/run"}
# 16 completions per iteration and a held-out test of 8 problems x 1 sample.
SMALL = {"group_size": 4, "train_batch_size_per_learner": 16, "minibatch_size": 16,
         "test_num_problems": 8, "test_samples_per_problem": 1}
RUNNERS = {  # runner ID -> the test that runs it
    "cli-train": "test_cli_train_and_evaluate",
    "cli-evaluate": "test_cli_train_and_evaluate",
    "cli-compare": "test_cli_compare",
    "python-tune": "test_python_and_tune",
    "reverse-plugin": "test_plugged_in_verifier",
    "reverse-plugin-train": "test_plugged_in_verifier",
    "models-fetch": "test_models_fetch_and_list",
    "smollm2-train": "test_smollm2_tuned_example_trains",
}


def decision_problems(blocks) -> list[str]:
    """What is wrong with the README's markers: each block needs a decision that is carried out."""
    problems = []
    for block in blocks:
        if block.kind is None:
            problems.append(f"{block.where()} has no marker: put `<!-- example: run ID (how) -->`, "
                            "`<!-- example: ci NAME -->` or `<!-- example: not run: REASON -->` on the "
                            "line before it (docs/development.md)")
        elif block.kind == "run" and block.name not in RUNNERS:
            problems.append(f"{block.where()}: runner {block.name!r} is not in RUNNERS of {pathlib.Path(__file__).name}")
        elif block.kind == "ci" and (block.name not in CI_RUNNERS
                                     or block.name not in (REPO / CI_RUNNERS[block.name]).read_text()):
            problems.append(f"{block.where()}: no CI script runs `ci {block.name}` ({sorted(CI_RUNNERS)})")
        elif block.kind == "not run" and len(block.name) < 10:
            problems.append(f"{block.where()}: `not run` needs a reason, got {block.name!r}")
    used = {b.name for b in blocks if b.kind == "run"}
    problems += [f"runner {name!r} runs no README block (remove it from RUNNERS)" for name in RUNNERS if name not in used]
    return problems


def test_every_readme_block_is_run_or_says_why_not():
    problems = decision_problems(readme.blocks())
    assert not problems, "\n".join(problems)


def test_a_new_block_without_a_marker_fails_the_check():
    text = ("<!-- example: not run: needs eight GPUs and a cluster -->\n```bash\nray start --head\n```\n\n"
            "Some prose.\n\n```python\nprint('new')\n```\n")
    blocks = readme.blocks(text)
    assert [b.kind for b in blocks] == ["not run", None]
    assert any("line 8 (python block) has no marker" in p for p in decision_problems(blocks))


def block(runner: str, index: int = 0) -> readme.Block:
    found = [b for b in readme.blocks() if b.kind == "run" and b.name == runner]
    assert found, f"no README block is marked `run {runner}`"
    return found[index]


def commands(runner: str) -> list[list[str]]:
    lines = [line for line in block(runner).code.splitlines() if line.strip() and not line.startswith("#")]
    return [shlex.split(line) for line in lines]


def smaller(argv: list[str], config: dict | None = None, **flags: str) -> list[str]:
    """``argv`` with ``config`` merged into its --config, and each flag set (replaced or added)."""
    argv = list(argv)
    if config is not None:
        if "--config" in argv:
            at = argv.index("--config") + 1
            argv[at] = json.dumps({**json.loads(argv[at]), **config})
        else:
            argv += ["--config", json.dumps(config)]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def run_cli(argv: list[str]) -> None:
    assert argv[0] == "sfpo-rllib", argv
    extra = ["--no-progress"] + (["--num-cpus", "2"] if argv[1] in ("train", "compare") else [])
    main(argv[1:] + extra)


def in_a_checkout(tmp_path, monkeypatch) -> None:
    """Work in ``tmp_path`` as in the repository's root: runs/ is written there, and the
    tuned examples are where the README's commands name them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tuned_examples").symlink_to(REPO / "tuned_examples")


def iterations(run: pathlib.Path) -> list[int]:
    return [row["iteration"] for row in read_metrics(str(run / "metrics.jsonl"))]


@pytest.mark.slow
def test_cli_train_and_evaluate(tmp_path, monkeypatch):
    in_a_checkout(tmp_path, monkeypatch)
    fresh, short, resume = commands("cli-train")
    run_cli(smaller(fresh, SMALL, stop_iters="1"))
    run_cli(smaller(short, SMALL, stop_iters="1"))
    run_cli(smaller(resume, SMALL, stop_iters="2"))
    assert iterations(tmp_path / "runs/my_run") == [0, 1]
    assert iterations(tmp_path / "runs/short") == [0, 1, 2]  # resumed after iteration 1
    assert (tmp_path / "runs/short/final_model/config.json").is_file()

    model, checkpoints = commands("cli-evaluate")
    run_cli(smaller(model, n="2", num_problems="8"))
    run_cli(smaller(checkpoints, num_problems="8"))
    for out in ("runs/short/eval", "runs/short/eval_all"):
        assert (tmp_path / out / "results.json").is_file(), out


@pytest.mark.slow
def test_cli_compare(tmp_path, monkeypatch):
    in_a_checkout(tmp_path, monkeypatch)
    (compare,) = commands("cli-compare")
    run_cli(smaller(compare, SMALL, seeds="0", iters="1"))
    for arm in ("GRPO", "SFPO"):
        assert iterations(tmp_path / "runs/compare/runs" / arm / "seed_0") == [0, 1]
    assert (tmp_path / "runs/compare/report.md").is_file()


def run_as_written(code: str, cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """Run in its own process, as a user would, with this venv's commands on PATH and a home of
    its own (Tune writes under ~/ray_results)."""
    env = {**os.environ, "HOME": str(cwd), "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run([*args, code] if args else ["bash", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_python_and_tune(tmp_path):
    done = run_as_written(block("python-tune").code, tmp_path, sys.executable, "-c")
    printed = [line for line in done.stdout.splitlines() if line.replace(".", "", 1).isdigit()]
    assert printed and 0.0 <= float(printed[0]) <= 1.0, done.stdout  # the held-out accuracy it prints
    finished = [line for line in done.stdout.splitlines() if line.endswith("finished after 2 iteration(s)")]
    assert len(finished) == 2, done.stdout  # the α grid's two trials ran to their stop
    assert len(list((tmp_path / "ray_results").glob("SFPO_*/SFPO_*reposition_alpha=*"))) == 2


@pytest.mark.slow
def test_plugged_in_verifier(tmp_path):
    package = block("reverse-plugin").code
    assert package.startswith("# my_verifiers/__init__.py\n")
    (tmp_path / "my_verifiers").mkdir()
    (tmp_path / "my_verifiers" / "__init__.py").write_text(package)
    run_as_written(block("reverse-plugin-train").code, tmp_path)
    rows = read_metrics(str(tmp_path / "runs/reverse/metrics.jsonl"))
    assert [row["iteration"] for row in rows] == [0, 1, 2]
    tested = [row for row in rows if row["test_accuracy"] is not None]
    assert [row["iteration"] for row in tested] == [0, 2]
    assert all(row["test_problems"] == 4 and row["test_overlap_problems"] == 0 for row in tested)


@pytest.mark.real_model
def test_models_fetch_and_list(smollm2, capsys):
    fetch, listing = commands("models-fetch")
    main(fetch[1:])  # already in the cache (the smollm2 fixture): found, not fetched again
    main(listing[1:])
    out = capsys.readouterr().out
    assert str(smollm2) in out and "smollm2-135m-instruct" in out, out


@pytest.mark.real_model
def test_smollm2_tuned_example_trains(smollm2, tmp_path, monkeypatch):
    """The real-model section's training command, as written but one small iteration: it loads the
    fetched model by name, trains its LoRA adapters and exports a merged model."""
    in_a_checkout(tmp_path, monkeypatch)
    (train,) = commands("smollm2-train")
    small = {"group_size": 4, "train_batch_size_per_learner": 8, "minibatch_size": 8, "max_new_tokens": 8,
             "test_num_problems": 8, "test_samples_per_problem": 1}
    run_cli(smaller(train, small, stop_iters="1"))
    run = tmp_path / "runs/smollm2_sfpo_lora"
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [row["iteration"] for row in rows] == [0, 1]
    assert rows[-1]["completion_tokens"] > 0 and rows[-1]["test_problems"] == 8
    assert (run / "final_model/config.json").is_file()

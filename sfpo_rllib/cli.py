"""``sfpo-rllib``: the command-line tool, in the spirit of the old ``rllib train``.

  sfpo-rllib train --algo SFPO --env sfpo/Arithmetic-v0 --config '{"lr": 1e-4}' \\
      --stop-iters 50 --seed 0 --output runs/arith
  sfpo-rllib train file tuned_examples/arithmetic_sfpo.py --stop-iters 5 --output runs/x

A tuned-example file defines ``config`` (an SFPOConfig) and may define ``stop_iters``;
flags given on the command line override it. ``--config`` takes any setting by name,
RLlib's included (``num_learners``, ``num_env_runners``, ...).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import runpy
import sys
import time
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as our one line (argparse prints the usage text first)."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sfpo-rllib", description="SFPO / GRPO for LLMs on Ray RLlib.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy (from flags, or from a tuned-example file)")
    train.add_argument("source", nargs="?", choices=["file"], help="'file PATH' to start from a tuned example")
    train.add_argument("path", nargs="?", help="the tuned-example file (after 'file')")
    train.add_argument("--algo", choices=["SFPO", "GRPO"], help="algorithm (default SFPO, or the file's)")
    train.add_argument("--env", help="gymnasium id, e.g. sfpo/Arithmetic-v0 or your_pkg:Your/Id-v0")
    train.add_argument("--config", default="{}", help="JSON object of settings, e.g. '{\"lr\": 1e-4}'")
    train.add_argument("--stop-iters", type=int, help="number of training iterations (default: the file's, else 100)")
    train.add_argument("--seed", type=int, help="run seed (the same seed repeats the run)")
    train.add_argument("--output", help="output folder (default runs/<algo>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in --output")
    train.add_argument("--overwrite", action="store_true",
                       help="delete what a previous run wrote in --output (metrics, checkpoints, model) and start over")
    train.add_argument("--allow-config-change", action="store_true",
                       help="with --resume: apply settings that differ from the checkpoint's (recorded in run_config.json)")
    train.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints")
    train.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _fail(message: str) -> NoReturn:
    one_line = " ".join(str(message).split("\nTo suppress all validation errors")[0].split())
    print(f"sfpo-rllib: error: {one_line}", file=sys.stderr)
    raise SystemExit(2)


def _run_tuned_example(path: str) -> dict:
    try:
        return runpy.run_path(path)
    except SyntaxError as err:
        _fail(f"tuned-example file {path}, line {err.lineno}: {err.msg}. Fix the file.")
    except Exception as err:  # the file is the user's code: report it, whatever it raised
        _fail(f"tuned-example file {path} raised {type(err).__name__}: {err}. Fix the file.")


def build_config(args: argparse.Namespace):
    """The run's config: the file's (if any), then --algo, --env, --config and --seed on top."""
    from sfpo_rllib import ALGORITHMS

    stop_iters = None
    if args.source == "file":
        if not args.path or not os.path.isfile(args.path):
            _fail(f"tuned-example file {args.path!r} does not exist.")
        namespace = _run_tuned_example(args.path)
        if "config" not in namespace:
            _fail(f"{args.path} defines no `config`; a tuned example must set `config = SFPOConfig()...`.")
        config = namespace["config"]
        if not isinstance(config, ALGORITHMS["SFPO"][1]):
            _fail(f"{args.path}: `config` is a {type(config).__name__}, not an SFPOConfig/GRPOConfig.")
        stop_iters = namespace.get("stop_iters")
        if stop_iters is not None and (not isinstance(stop_iters, int) or isinstance(stop_iters, bool) or stop_iters < 1):
            _fail(f"{args.path}: `stop_iters` ({stop_iters!r}) must be an int >= 1.")
        if args.algo and type(config) is not ALGORITHMS[args.algo][1]:
            settings = config.to_dict()
            config = ALGORITHMS[args.algo][1]().update_from_dict(settings)
            if args.algo == "GRPO":
                config.fast_steps = 0  # GRPO is SFPO with the fast stage off
    elif args.path:
        _fail(f"unexpected argument {args.path!r}; did you mean 'train file {args.path}'?")
    else:
        config = ALGORITHMS[args.algo or "SFPO"][1]()
        if not args.env:
            _fail("--env is required (e.g. --env sfpo/Arithmetic-v0) unless you train from a file.")
    if args.env:
        config.environment(args.env)
    try:
        overrides = json.loads(args.config)
    except json.JSONDecodeError as err:
        _fail(f"--config is not valid JSON ({err}): {args.config!r}")
    if not isinstance(overrides, dict):
        _fail(f"--config must be a JSON object of settings, got {type(overrides).__name__}.")
    for key in overrides:
        if not hasattr(config, key):
            close = difflib.get_close_matches(key, [k for k in vars(config) if not k.startswith("_")], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            _fail(f"--config: unknown setting {key!r}.{hint}")
    for key, value in overrides.items():  # one at a time, to name the setting that cannot be applied
        try:
            config.update_from_dict({key: value})
        except Exception as err:  # RLlib's setters raise several types on wrongly typed values
            shown = json.dumps(value)
            _fail(f"--config: `{key}` ({shown if len(shown) <= 60 else shown[:57] + '...'}) cannot be applied "
                  f"({type(err).__name__}: {err}); check its type in the README settings table.")
    if args.seed is not None:
        config.debugging(seed=args.seed)
    return config, stop_iters


def _check_flags(args: argparse.Namespace) -> None:
    for flag, value in (("--stop-iters", args.stop_iters), ("--checkpoint-every", args.checkpoint_every),
                        ("--num-cpus", args.num_cpus)):
        if value is not None and value < 1:
            _fail(f"{flag} ({value}) must be >= 1.")
    if args.allow_config_change and not args.resume:
        _fail("--allow-config-change only applies with --resume (a new run takes any settings).")


def train(args: argparse.Namespace) -> None:
    from sfpo_rllib.train_run import check_output_dir, check_resume, run_training

    _check_flags(args)
    config, file_stop_iters = build_config(args)
    try:
        config.validate()
    except Exception as err:  # ours are ValueErrors; anything else is still the user's setting
        _fail(str(err) if isinstance(err, ValueError) else f"invalid settings ({type(err).__name__}: {err})")
    stop_iters = args.stop_iters if args.stop_iters is not None else file_stop_iters or 100
    output = args.output or os.path.join("runs", f"{type(config).__name__.removesuffix('Config')}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        check_output_dir(os.path.abspath(output), resume=args.resume, overwrite=args.overwrite)
        if args.resume:
            check_resume(os.path.abspath(output), config, stop_iters=stop_iters,
                         allow_config_change=args.allow_config_change)
    except ValueError as err:
        _fail(str(err))

    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, configure_logging=False)
    try:
        last = run_training(
            config,
            stop_iters=stop_iters,
            output_dir=output,
            resume=args.resume,
            overwrite=args.overwrite,
            allow_config_change=args.allow_config_change,
            checkpoint_every=args.checkpoint_every,
            progress=not args.no_progress,
        )
    except ValueError as err:
        _fail(str(err))
    finally:
        ray.shutdown()
    shown = {k: last[k] for k in ("iteration", "rollouts", "reward_mean", "test_accuracy") if k in last}
    print(f"done: {json.dumps(shown)}\nmetrics: {os.path.join(output, 'metrics.jsonl')}\n"
          f"model:   {os.path.join(output, 'final_model')}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "train":
        train(args)


if __name__ == "__main__":
    main()

"""``sfpo-rllib``: the command-line tool, in the spirit of the old ``rllib train``.

  sfpo-rllib train --algo SFPO --env sfpo/Arithmetic-v0 --config '{"lr": 1e-4}' \\
      --stop-iters 50 --seed 0 --output runs/arith
  sfpo-rllib train file tuned_examples/arithmetic_sfpo.py --stop-iters 5 --output runs/x
  sfpo-rllib train file tuned_examples/arithmetic_sfpo.py --ray-address auto   # join a `ray start --head` cluster
  sfpo-rllib compare --base tuned_examples/arithmetic_sfpo.py --arms ARMS.json --seeds 0,1,2 --output runs/cmp
  sfpo-rllib models fetch smollm2-135m-instruct      # a pretrained model into the model cache, once
  sfpo-rllib models list

A tuned-example file defines ``config`` (an SFPOConfig) and may define ``stop_iters``;
flags given on the command line override it. ``--config`` takes any setting by name,
RLlib's included (``num_learners``, ``num_env_runners``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import runpy
import shlex
import sys
import time
from typing import NoReturn

from sfpo_rllib.quiet import quiet_model_load_bars


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as our one line (argparse prints the usage text first)."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    from sfpo_rllib import ALGORITHMS  # already imported with the package

    parser = _Parser(prog="sfpo-rllib", description="SFPO / GRPO for LLMs on Ray RLlib.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy (from flags, or from a tuned-example file)")
    train.add_argument("source", nargs="?", choices=["file"], help="'file PATH' to start from a tuned example")
    train.add_argument("path", nargs="?", help="the tuned-example file (after 'file')")
    train.add_argument("--algo", choices=list(ALGORITHMS), help="algorithm (default SFPO, or the file's)")
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
    _add_ray_address(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_compare_parser(sub)
    _add_evaluate_parser(sub)
    _add_models_parser(sub)
    return parser


def _add_ray_address(parser) -> None:
    parser.add_argument("--ray-address", metavar="local|auto|HOST:PORT",
                        help="the Ray to run on: 'local' starts one for this command; 'auto' or the head's HOST:PORT "
                             "joins a cluster started with `ray start --head` (default: $RAY_ADDRESS, else local)")


def _add_models_parser(sub) -> None:
    from sfpo_rllib.models import PRETRAINED_MODELS

    models = sub.add_parser("models", help="fetch a pretrained model into the model cache ($SFPO_RLLIB_CACHE, else "
                                           "~/.cache/sfpo_rllib); list what is cached")
    action = models.add_subparsers(dest="models_command", required=True)
    fetch = action.add_parser("fetch", help="download, verify and convert a known model (once; runs never download)")
    fetch.add_argument("name", choices=list(PRETRAINED_MODELS), help="the model's name")
    action.add_parser("list", help="the cached models: name, path, size, dtype variants")


def _add_evaluate_parser(sub) -> None:
    from sfpo_rllib.engines.factory import ROLLOUT_ENGINES

    ev = sub.add_parser("evaluate", help="avg@n and pass@k of a model or a run's checkpoints on held-out problems")
    what = ev.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="a final_model/ folder or any local Hugging Face causal-LM checkpoint")
    what.add_argument("--checkpoint", help="an RLlib checkpoint, or a run folder (every checkpoint; the best is named)")
    ev.add_argument("--env", help="gymnasium id of the held-out task (default: the checkpoint's)")
    ev.add_argument("--env-config", help="JSON env_config for --env, e.g. '{\"data\": \"test.jsonl\"}'")
    ev.add_argument("--split", default="test", help="split passed to the environment (default test)")
    ev.add_argument("--benchmarks", help="comma-separated: " + ", ".join(_benchmark_names()))
    ev.add_argument("--benchmarks-dir", help="folder with the benchmark files (e.g. data/benchmarks)")
    ev.add_argument("--n", type=int, help="samples per problem (default 4, or the run's)")
    ev.add_argument("--temperature", type=float, help="sampling temperature (default 1.0, or the run's)")
    ev.add_argument("--top-p", type=float, help="nucleus sampling (default 0.7 as the SFPO authors validate, or the run's)")
    ev.add_argument("--top-k", type=int, help="top-k sampling, 0 = off (default: the run's, else 0)")
    ev.add_argument("--max-new-tokens", type=int, help="longest completion (default: the run's, else 2560)")
    ev.add_argument("--engine", choices=list(ROLLOUT_ENGINES), help="rollout engine (default hf, or the run's)")
    ev.add_argument("--num-problems", type=int, help="only the first N problems of each benchmark")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ev.add_argument("--config", default="{}", help="JSON of further settings, e.g. '{\"model_dtype\": \"bfloat16\"}'")
    ev.add_argument("--output", help="folder for results.json, results.csv and results.md")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")


def _benchmark_names() -> list[str]:
    from sfpo_rllib.evaluate import BENCHMARKS

    return list(BENCHMARKS)


def _add_compare_parser(sub) -> None:
    compare = sub.add_parser("compare", help="train several arms x seeds side by side; table, plots, report")
    compare.add_argument("--base", help="tuned-example file every arm starts from (default: SFPO defaults)")
    compare.add_argument("--env", help="gymnasium id (default: the base file's)")
    compare.add_argument("--config", default="{}", help="JSON settings applied to every arm, on top of --base")
    compare.add_argument("--arms", help="JSON file {name: settings} or Python file defining `arms`")
    compare.add_argument("--arm", action="append", default=[], metavar="NAME=JSON",
                         help="one arm, e.g. 'GRPO={\"algo\": \"GRPO\"}' (repeatable)")
    compare.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (default 0,1,2)")
    compare.add_argument("--iters", type=int, help="iterations per run (default: the base file's, else 40)")
    compare.add_argument("--baseline", help="arm whose best mean accuracy is the target (default: the first arm)")
    compare.add_argument("--target", type=float, help="target held-out accuracy in [0, 1] (default: the baseline's best)")
    compare.add_argument("--output", required=True, help="output folder; finished runs in it are kept, not re-run")
    compare.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    _add_ray_address(compare)
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")


def _fail(message: str) -> NoReturn:
    one_line = " ".join(str(message).split("\nTo suppress all validation errors")[0].split())
    print(f"sfpo-rllib: error: {one_line}", file=sys.stderr)
    raise SystemExit(2)


def _user_error(err: BaseException) -> ValueError | None:
    """The user-input error behind ``err``, or None for a bug (whose traceback must show).

    Our checks raise ValueErrors. One raised in a remote learner or env runner arrives
    wrapped in a RayTaskError (whose text is the remote traceback): its ``cause`` is the
    original. A ``RowTooLongError`` is found however deep RLlib nested it."""
    from ray.exceptions import RayTaskError

    from sfpo_rllib.batch import RowTooLongError

    chain, seen = [], err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = getattr(seen, "cause", None) if isinstance(seen, RayTaskError) else seen.__cause__
    for found in chain:  # a RayTaskError is also an instance of its cause's class: skip it
        if isinstance(found, RowTooLongError) and not isinstance(found, RayTaskError):
            return found
    while isinstance(err, RayTaskError) and err.cause is not None and err.cause is not err:
        err = err.cause
    return err if isinstance(err, ValueError) and not isinstance(err, RayTaskError) else None


@contextlib.contextmanager
def _ray(args: argparse.Namespace, log_to_driver: bool = True):
    """The command's Ray (``--ray-address``; a new local instance by default): a user's error
    raised inside (see ``_user_error``) ends it with one line, a bug with its traceback; a
    local Ray is shut down, a joined cluster left running, either way."""
    from sfpo_rllib.ray_session import LOCAL, ray_session, resolve_address

    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(ray_session(args.ray_address, num_cpus=args.num_cpus,
                                                      log_to_driver=log_to_driver))
        except ValueError as err:
            _fail(str(err))
        if resolve_address(args.ray_address) != LOCAL:
            print(f"Ray: joined the cluster at {cluster['address']} ({cluster['nodes']} node(s), "
                  f"{cluster['cpus']:g} CPUs, {cluster['gpus']:g} GPUs)", file=sys.stderr)
        try:
            yield
        except Exception as err:
            user_error = _user_error(err)
            if user_error is None:
                raise
            _fail(str(user_error))


def _run_tuned_example(path: str) -> dict:
    try:
        return runpy.run_path(path)
    except SyntaxError as err:
        _fail(f"tuned-example file {path}, line {err.lineno}: {err.msg}. Fix the file.")
    except Exception as err:  # the file is the user's code: report it, whatever it raised
        _fail(f"tuned-example file {path} raised {type(err).__name__}: {err}. Fix the file.")


def build_config(args: argparse.Namespace):
    """The run's config: the file's (if any), then --algo, --env, --config and --seed on top."""
    from sfpo_rllib import ALGORITHMS, config_of

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
            config = config_of(args.algo, config.to_dict())
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
            from sfpo_rllib.sfpo_config import closest_setting

            close = closest_setting(key, config)
            hint = f" Did you mean {close!r}?" if close else ""
            _fail(f"--config: unknown setting {key!r}.{hint}")
    for key, value in overrides.items():  # one at a time, to name the setting that cannot be applied
        try:
            config.update_from_dict({key: value})
        except Exception as err:  # RLlib's setters raise several types on wrongly typed values
            shown = json.dumps(value)
            _fail(f"--config: `{key}` ({shown if len(shown) <= 60 else shown[:57] + '...'}) cannot be applied "
                  f"({type(err).__name__}: {err}); check its type in docs/settings.md.")
    if args.seed is not None:
        config.debugging(seed=args.seed)
    return config, stop_iters


def _check_flags(args: argparse.Namespace) -> None:
    for flag, value in (("--stop-iters", args.stop_iters), ("--checkpoint-every", args.checkpoint_every),
                        ("--num-cpus", args.num_cpus)):
        if value is not None and value < 1:
            _fail(f"{flag} ({value}) must be >= 1.")
    _check_ray_address(args)
    if args.allow_config_change and not args.resume:
        _fail("--allow-config-change only applies with --resume (a new run takes any settings).")


def _check_ray_address(args: argparse.Namespace) -> None:
    """--ray-address's form and --num-cpus's fit with it, before anything else runs."""
    from sfpo_rllib.ray_session import check_address, init_options, resolve_address

    try:
        init_options(check_address(resolve_address(args.ray_address)), num_cpus=args.num_cpus)
    except ValueError as err:
        _fail(str(err))


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

    with _ray(args):
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
    shown = {k: last[k] for k in ("iteration", "rollouts", "reward_mean", "test_accuracy") if k in last}
    print(f"done: {json.dumps(shown)}\nmetrics: {os.path.join(output, 'metrics.jsonl')}\n"
          f"model:   {os.path.join(output, 'final_model')}")


def compare(args: argparse.Namespace) -> None:
    from sfpo_rllib import compare as comparing

    base_args = argparse.Namespace(source="file" if args.base else None, path=args.base, algo=None, env=args.env,
                                   config=args.config, seed=None)
    if not args.base and not args.env:
        base_args.env = "sfpo/Arithmetic-v0"
    base, file_stop_iters = build_config(base_args)
    iters = args.iters or file_stop_iters or 40
    if iters < 1:
        _fail(f"--iters ({iters}) must be >= 1.")
    if args.num_cpus is not None and args.num_cpus < 1:
        _fail(f"--num-cpus ({args.num_cpus}) must be >= 1.")
    _check_ray_address(args)
    if args.target is not None and not 0.0 <= args.target <= 1.0:
        _fail(f"--target ({args.target}) must be an accuracy in [0, 1], e.g. 0.35.")
    try:
        arms = comparing.load_arms(args.arms, args.arm)
        seeds = comparing.parse_seeds(args.seeds)
        for name, settings in arms.items():  # every arm's settings checked before anything runs
            comparing.arm_config(base, name, settings, seeds[0])
    except ValueError as err:
        _fail(str(err).split("\nTo suppress all validation errors")[0])

    with _ray(args, log_to_driver=False):
        comparing.compare(base, arms, seeds=seeds, iters=iters, output=args.output, baseline=args.baseline,
                          target=args.target, command="sfpo-rllib " + shlex.join(args.argv),
                          progress=not args.no_progress)


def _json_object(flag: str, text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        _fail(f"{flag} is not valid JSON ({err}): {text!r}")
    if not isinstance(value, dict):
        _fail(f"{flag} must be a JSON object, got {type(value).__name__}.")
    return value


def evaluate(args: argparse.Namespace) -> None:
    from sfpo_rllib.evaluate import run_evaluate

    for flag, value, low in (("--n", args.n, 1), ("--num-problems", args.num_problems, 1), ("--max-new-tokens", args.max_new_tokens, 1)):
        if value is not None and value < low:
            _fail(f"{flag} ({value}) must be >= {low}.")
    if args.temperature is not None and args.temperature <= 0:
        _fail(f"--temperature ({args.temperature}) must be > 0 (sampling; use a small value for near-greedy).")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        _fail(f"--top-p ({args.top_p}) must be in (0, 1].")
    settings = _json_object("--config", args.config) or {}
    try:
        run_evaluate(
            model=args.model, checkpoint=args.checkpoint, env=args.env, env_config=_json_object("--env-config", args.env_config),
            split=args.split, benchmarks=args.benchmarks, benchmarks_dir=args.benchmarks_dir, n=args.n,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
            engine=args.engine, num_problems=args.num_problems, seed=args.seed, settings=settings, output=args.output,
            progress=not args.no_progress,
        )
    except ValueError as err:
        _fail(str(err).split("\nTo suppress all validation errors")[0])


def models(args: argparse.Namespace) -> None:
    from sfpo_rllib import models as registry

    if args.models_command == "fetch":
        try:
            folder = registry.fetch(args.name)
        except ValueError as err:
            _fail(str(err))
        print(folder)
        return
    rows = registry.cached_models()
    if not rows:
        print(f"no models cached in {registry.default_cache_dir()}; fetch one with `sfpo-rllib models fetch NAME` "
              f"({', '.join(registry.PRETRAINED_MODELS)})")
        return
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'size':>11}  {'dtype variants':<17}  path")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['size_bytes'] / 2**20:7.0f} MiB  {','.join(r['variants']):<17}  {r['path']}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    quiet_model_load_bars()
    if args.command == "train":
        train(args)
    elif args.command == "compare":
        compare(args)
    elif args.command == "evaluate":
        evaluate(args)
    elif args.command == "models":
        models(args)


if __name__ == "__main__":
    main()

"""SFPO on a simulated multi-node Ray cluster: the env runner on one node, two DDP learners
each on a node of its own (placed by custom resources, RLlib's own settings), one step off;
two iterations equal the single-node run with a local learner. And the CLI joining a cluster
started as its own process with `ray start --head` (--ray-address)."""

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from sfpo_rllib.rllib_compat import LEAN_LOCAL_RAY

from test_training_e2e import max_abs_diff, policy_weights, tiny_config, train

ROLLOUT_NODE, LEARNER_NODE = "rollout_node", "learner_node"


def lag_one(learners: int):
    return tiny_config(learners=learners, runners=1, rollout_lag=1, tis_cap=2.0)


def node_of_each(algo) -> tuple[list[str], list[str]]:
    node = lambda *_: ray.get_runtime_context().get_node_id()  # noqa: E731
    learners = [result.get() for result in algo.learner_group.foreach_learner(node)]  # RLlib's CallResults
    return algo.env_runner_group.foreach_env_runner(node, local_env_runner=False), learners


@pytest.mark.slow
def test_runner_and_two_learners_on_separate_nodes_match_one_node(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {ROLLOUT_NODE: 1}})
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={LEARNER_NODE: 1})
    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        cluster.wait_for_nodes()
        single, single_rows = train(lag_one(learners=0), iterations=2)
        config = (lag_one(learners=2)
                  .env_runners(custom_resources_per_env_runner={ROLLOUT_NODE: 1})
                  .learners(custom_resources_per_learner={LEARNER_NODE: 1}))
        algo = config.build_algo()
        try:
            runner_nodes, learner_nodes = node_of_each(algo)
            rows = [algo.train()["sfpo"] for _ in range(2)]
            multi = policy_weights(algo)
        finally:
            algo.stop()
        assert len(set(learner_nodes)) == 2 and not set(runner_nodes) & set(learner_nodes)
        assert max_abs_diff(single, multi) < 1e-5
        assert [r["policy_lag"] for r in rows] == [0, 1]
        assert abs(rows[1]["entropy"] - single_rows[1]["entropy"]) < 1e-5
    finally:
        ray.shutdown()
        cluster.shutdown()


# ----- the CLI joining a cluster started with `ray start --head` ------------------------------
HEAD_RESOURCE = "sfpo_test_head"  # only the head started here has it: a run that needs it ran there


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(num_cpus: int):
    """`ray start --head --block` in a process group of its own, on free ports, with its own temp
    dir; stopped by signalling that group only (never `ray stop`, which stops every Ray of the user)."""
    temp_dir = tempfile.mkdtemp(prefix="sfpo-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    ports = [f"--{name}={free_port()}" for name in ("ray-client-server-port", "dashboard-port", "dashboard-agent-listen-port",
                                                     "dashboard-agent-grpc-port", "metrics-export-port",
                                                     "runtime-env-agent-port", "node-manager-port", "object-manager-port")]
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}",
         "--include-dashboard=false", "--disable-usage-stats", f"--resources={json.dumps({HEAD_RESOURCE: 1})}",
         f"--system-config={json.dumps(LEAN_LOCAL_RAY)}", *ports],
        env=isolated_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not glob.glob(os.path.join(temp_dir, "session_*", "logs", "raylet.out")) or not _answers(port):
            assert head.poll() is None, f"ray start --head exited with {head.returncode}"
            assert time.monotonic() < deadline, "the Ray head did not start within 240 s"
            time.sleep(1)
        yield head, port
    finally:
        _stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        return True
    return False


def _stop_group(head: subprocess.Popen) -> None:
    """SIGTERM to the head's process group (`ray start --block` then stops its processes), SIGKILL after 60 s."""
    for sig, wait_s in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(head.pid, 0)
            except ProcessLookupError:
                head.wait()
                return
            time.sleep(0.5)


# Ray's token authentication (on by default for `ray start`) with a token of this test's own: the
# user's ~/.ray/auth_token may be rewritten meanwhile by other Ray clusters of the same user.
TOKEN = secrets.token_hex(32)


def isolated_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sfpo_rllib.cli", *args], env=isolated_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_the_cli_joins_a_running_cluster_and_leaves_it_running(tmp_path):
    settings = {"group_size": 4, "train_batch_size_per_learner": 32, "minibatch_size": 16, "max_new_tokens": 12,
                "rollout_lag": 1, "tis_cap": 2.0, "num_env_runners": 1, "num_cpus_per_env_runner": 1,
                "torch_threads_per_runner": 1, "test_interval": 0,
                "custom_resources_per_env_runner": {HEAD_RESOURCE: 1}}
    train = ["train", "--env", "sfpo/Arithmetic-v0", "--config", json.dumps(settings), "--stop-iters", "2",
             "--seed", "7", "--no-progress"]
    # The runner needs a resource only that head has: a local Ray refuses the run at once.
    local = cli(*train, "--output", str(tmp_path / "local"))
    assert local.returncode == 2 and f"'{HEAD_RESOURCE}'" in local.stderr and "--ray-address" in local.stderr
    with ray_head(num_cpus=2) as (head, port):
        joined = cli(*train, "--output", str(tmp_path / "run"), "--ray-address", f"127.0.0.1:{port}")
        assert joined.returncode == 0, joined.stderr[-3000:]
        assert f":{port} (1 node(s), 2 CPUs, 0 GPUs)" in joined.stderr
        start = json.loads((tmp_path / "run" / "run_config.json").read_text())["history"][0]
        assert start["ray"]["address"].endswith(f":{port}") and start["ray"]["nodes"] == 1 and start["ray"]["cpus"] == 2
        rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["policy_lag"] for r in rows] == [0, 1]
        assert head.poll() is None and _answers(port)  # the command left; the cluster runs on

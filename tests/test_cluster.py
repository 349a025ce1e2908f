"""SFPO on a simulated multi-node Ray cluster: the env runner on one node, two DDP learners
each on a node of its own (placed by custom resources, RLlib's own settings), one step off;
two iterations equal the single-node run with a local learner."""

import pytest
import ray
from ray.cluster_utils import Cluster

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

"""--ray-address: bad values and addresses where no cluster runs end with one line and exit 2,
before any Ray starts (joining a real cluster: tests/test_cluster.py)."""

import socket

import pytest

from sfpo_rllib.cli import main
from sfpo_rllib.ray_session import check_address, resolve_address

TRAIN = ["train", "--env", "sfpo/Arithmetic-v0", "--stop-iters", "1"]


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("value", ["nonsense", "host:", ":6379", "127.0.0.1:99999", "127.0.0.1:port", "a b:1"])
def test_a_malformed_address_names_the_flag_and_the_forms(value, capsys, tmp_path):
    err = fails(TRAIN + ["--output", str(tmp_path / "r"), "--ray-address", value], capsys)
    assert "--ray-address" in err and repr(value) in err and "HOST:PORT" in err
    assert not (tmp_path / "r").exists()


def test_ray_client_addresses_are_refused_with_what_to_do(capsys, tmp_path):
    err = fails(TRAIN + ["--output", str(tmp_path / "r"), "--ray-address", "ray://10.0.0.5:10001"], capsys)
    assert "ray://" in err and "ray job submit" in err


@pytest.mark.parametrize("command", ["train", "compare"])
def test_no_cluster_at_the_address_fails_at_once_naming_the_flag_and_the_fix(command, capsys, tmp_path):
    address = f"127.0.0.1:{unused_port()}"
    argv = (TRAIN if command == "train" else ["compare", "--arm", "a={}", "--seeds", "0"])
    err = fails(argv + ["--output", str(tmp_path / "r"), "--ray-address", address], capsys)
    assert f"--ray-address {address}: no Ray cluster answers" in err and "ray start --head" in err


def test_auto_reads_ray_address_from_the_environment(capsys, tmp_path, monkeypatch):
    port = unused_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    err = fails(TRAIN + ["--output", str(tmp_path / "r"), "--ray-address", "auto"], capsys)
    # Ray resolves 127.0.0.1 to this node's IP, as ray.init would
    assert f"--ray-address auto (RAY_ADDRESS=127.0.0.1:{port}): no Ray cluster answers at " in err
    assert f":{port} (Connection refused)" in err


def test_num_cpus_does_not_apply_to_a_joined_cluster(capsys, tmp_path):
    err = fails(TRAIN + ["--output", str(tmp_path / "r"), "--num-cpus", "2", "--ray-address", "10.0.0.5:6379"], capsys)
    assert "--num-cpus" in err and "ray start --num-cpus" in err


def test_the_default_is_ray_address_else_a_local_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address(None) == "10.0.0.5:6379" and resolve_address("local") == "local"
    assert check_address("[::1]:6379") == "[::1]:6379" and check_address("head-0.cluster:6379")

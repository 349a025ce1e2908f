"""Where a command's Ray runs: a new one-machine instance it owns (the default), or a running
Ray cluster it joins (``--ray-address auto|HOST:PORT``, ``ray_session(address=...)``).

  sfpo-rllib train file tuned_examples/arithmetic_sfpo.py --ray-address auto      # after `ray start --head`
  sfpo-rllib train ... --ray-address 10.0.0.5:6379                                 # the head's GCS address

The address follows Ray's own meaning (``ray.init(address=...)``, ``RAY_ADDRESS``): ``local``
starts a new instance; ``auto`` joins the cluster ``RAY_ADDRESS`` names, else the last one
``ray start`` started on this machine; ``HOST:PORT`` joins that head. Without the flag the
command uses ``RAY_ADDRESS`` when it is set (as ``ray job submit`` does for its entrypoint),
else ``local``. Leaving a joined cluster disconnects this driver only; the cluster keeps running.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from typing import Any, Iterator

from sfpo_rllib.allocator import HUGE_PAGES_ENV

LOCAL, AUTO = "local", "auto"
ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own variable, read by ray.init and `ray job submit`
# The package's settings that the workers of a joined cluster must see as the driver does:
# they are started by the cluster's raylets, not by this process, so they do not inherit its
# environment (on a local instance they do).
FORWARDED_ENV = ("SFPO_RLLIB_CACHE", "HF_HUB_OFFLINE", HUGE_PAGES_ENV)
CONNECT_TIMEOUT_S = 5.0
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
FIX = "start one with `ray start --head` (it prints the address), or leave --ray-address out for a local Ray"


def resolve_address(flag: str | None) -> str:
    """The address a command uses: the flag's, else ``RAY_ADDRESS``'s, else ``local``."""
    return flag if flag is not None else (os.environ.get(ADDRESS_ENV) or LOCAL)


def check_address(address: str, *, flag: str = "--ray-address") -> str:
    """``address`` if it is ``local``, ``auto`` or ``HOST:PORT``; else a one-line ValueError."""
    if address in (LOCAL, AUTO):
        return address
    if "://" in address:
        raise ValueError(
            f"{flag} ({address!r}): Ray Client addresses (ray://) are not supported; run the command on a node of "
            "the cluster with --ray-address auto or the head's HOST:PORT (e.g. 10.0.0.5:6379), or submit it with "
            "`ray job submit`."
        )
    match = _HOST_PORT.match(address)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(
            f"{flag} ({address!r}) must be 'local', 'auto' or the head's HOST:PORT with a port in 1..65535 "
            "(e.g. 127.0.0.1:6379, as `ray start --head` prints it)."
        )
    return address


def bootstrap_address(address: str, *, flag: str = "--ray-address") -> str:
    """The HOST:PORT a joining command connects to, checked to accept connections.

    Ray's ``ray.init`` waits a long time (minutes) on an address where no cluster runs; this
    fails at once instead, with the flag and the fix."""
    from sfpo_rllib.rllib_compat import find_ray_cluster

    shown = address if address != AUTO else f"{AUTO} ({ADDRESS_ENV}={os.environ[ADDRESS_ENV]})" if os.environ.get(ADDRESS_ENV) else AUTO
    try:
        resolved = find_ray_cluster(address)
    except ConnectionError:
        raise ValueError(f"{flag} {shown}: no running Ray cluster found on this machine; {FIX}.") from None
    host, port = check_address(resolved, flag=f"{flag} {shown} -> {resolved}").rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise ValueError(
            f"{flag} {shown}: no Ray cluster answers at {resolved} ({err.strerror or err}); {FIX}."
        ) from None
    return resolved


def init_options(address: str, *, num_cpus: int | None = None, log_to_driver: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``ray.init``: a lean local instance, or joining ``address``."""
    from sfpo_rllib.rllib_compat import local_ray_options

    if address == LOCAL:
        return {"num_cpus": num_cpus, "configure_logging": False, "log_to_driver": log_to_driver, **local_ray_options()}
    if num_cpus is not None:
        raise ValueError(
            f"--num-cpus ({num_cpus}) sizes a local Ray; a joined cluster ({address}) has the CPUs its nodes were "
            "started with (`ray start --num-cpus`). Drop --num-cpus, or drop --ray-address."
        )
    env_vars = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    return {"address": address, "configure_logging": False, "log_to_driver": log_to_driver,
            "runtime_env": {"env_vars": env_vars} if env_vars else None}


def describe() -> dict[str, Any]:
    """The Ray the process is connected to, as a run records it: GCS address, nodes, CPUs, GPUs."""
    import ray

    resources = ray.cluster_resources()
    return {"address": ray.get_runtime_context().gcs_address, "nodes": sum(n["Alive"] for n in ray.nodes()),
            "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0)}


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True) -> Iterator[dict]:
    """Ray for one command or script: ``address`` as ``--ray-address`` takes it (None: ``RAY_ADDRESS``,
    else a new local instance). Yields :func:`describe`'s record; on exit shuts a local instance
    down, or disconnects from a joined cluster (which keeps running).

        with ray_session("auto"):
            run_training(config, stop_iters=40, output_dir="runs/x")
    """
    import ray

    address = check_address(resolve_address(address))
    options = init_options(address, num_cpus=num_cpus, log_to_driver=log_to_driver)
    if address != LOCAL:
        options["address"] = bootstrap_address(address)
    try:
        ray.init(**options)
    except ConnectionError as err:  # it answered the port, but is no Ray head (or refused us)
        raise ValueError(
            f"--ray-address {address}: something answers at {options['address']} but this process could not join it as "
            f"a Ray cluster ({err}); check that it is a Ray head started with `ray start --head` and, if the "
            "cluster uses token authentication (Ray's default for `ray start`), that this machine has its token "
            "(RAY_AUTH_TOKEN, or the head's ~/.ray/auth_token)."
        ) from None
    try:
        yield describe()
    finally:
        ray.shutdown()

"""Ray for the evaluator pool: a local Ray started without its dashboard unless asked, or a running cluster
joined at an address, including a head started on loopback on this machine. A cluster that does not answer or
refuses the connection is one UserError line, after at most JOIN_CHECK_SECONDS for the address to answer.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

from agentqat.errors import UserError
from agentqat.progress import Reporter, phase

JOIN_CHECK_SECONDS = 3.0  # how long the head's port may take to accept a TCP connection
RAY_OPTIONS = dict(logging_level="ERROR", log_to_driver=False)


def start_ray(address: str | None, num_cpus: int, dashboard: bool = False, reporter: Reporter | None = None) -> None:
    """Joins the Ray cluster at `address` (host:port, ray://host:port or auto), or starts a local Ray with at
    least `num_cpus` CPUs, its dashboard only if `dashboard`; reported as the phase "starting Ray" or "joining
    Ray". Does nothing if Ray is already running in this process."""
    import ray

    if ray.is_initialized():
        return
    if address:
        with phase(reporter, "joining Ray", detail=address):
            _join(address)
    else:
        cpus = max(num_cpus, os.cpu_count() or 1)
        detail = f"{cpus} CPUs, " + ("with the dashboard" if dashboard else "no dashboard")
        with phase(reporter, "starting Ray", detail=detail):
            _start_local(cpus, dashboard)


def _start_local(cpus: int, dashboard: bool) -> None:
    import ray

    if dashboard:
        try:
            import ray.dashboard.optional_deps  # noqa: F401 - what Ray itself checks before starting the dashboard
        except ImportError as error:
            raise UserError(
                f"the Ray dashboard needs packages that are not installed ({error})",
                "install ray[default] with pip, or leave the dashboard setting off",
            ) from None
    # "local" starts a new Ray even where `ray start` left a cluster that ray.init() would otherwise join.
    ray.init(address="local", num_cpus=cpus, include_dashboard=dashboard, **RAY_OPTIONS)


def _join(address: str) -> None:
    import ray
    from ray.exceptions import AuthenticationError

    options = dict(RAY_OPTIONS)
    if address != "auto":
        host = check_address(address)
        if is_loopback(host):  # the driver's node is the loopback one too, not the machine's other address
            options["_node_ip_address"] = "127.0.0.1"
    _use_token_if_available()
    try:
        ray.init(address=address, **options)
    except (ConnectionError, AuthenticationError, RuntimeError, ValueError) as error:
        ray.shutdown()
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"cannot join the Ray cluster at {address}: {reason}",
            "check the ray_address setting; a head with token authentication needs its token in "
            "RAY_AUTH_TOKEN or ~/.ray/auth_token",
        ) from None


def gpu_slots(node_gpus: list[float], per_worker: float) -> int:
    """Returns how many actors asking `per_worker` GPUs the nodes hold at once: a fraction packs floor(1 / f)
    actors on each of a node's GPUs (Ray never splits one actor over GPUs), a whole number takes that many GPUs."""
    if per_worker <= 0:
        raise ValueError("per_worker must be positive")
    if per_worker < 1:
        per_gpu = int(1 / per_worker + 1e-9)
        return sum(int(gpus + 1e-9) * per_gpu for gpus in node_gpus)
    return sum(int(gpus // per_worker) for gpus in node_gpus)


def check_gpus(workers: int, per_worker: float) -> None:
    """Raises a UserError when the joined Ray cluster cannot place `workers` actors of `per_worker` GPUs each at
    once (they would wait for GPUs forever); nothing to check for CPU actors."""
    import ray

    if per_worker <= 0:
        return
    node_gpus = [node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    slots = gpu_slots(node_gpus, per_worker)
    if slots < workers:
        raise UserError(
            f"{workers} evaluator actors of gpus_per_worker = {per_worker:g} do not fit the Ray cluster's GPUs "
            f"({sum(node_gpus):g} on {len(node_gpus)} node(s), room for {slots})",
            "use fewer workers, a smaller gpus_per_worker in the arena, a cluster with more GPUs, or gpus_per_worker = 0 for CPU actors",
        )


def split_address(address: str) -> tuple[str, int]:
    """Returns the host and port of a Ray address host:port or ray://host:port (IPv6 hosts in brackets)."""
    rest = address.removeprefix("ray://")
    host, separator, port = rest.rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"Ray address {address!r} is not host:port", "set ray_address like 127.0.0.1:6379")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Returns whether `host` names this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(address: str) -> str:
    """Returns the host of the Ray address host:port or ray://host:port once its port accepts a TCP connection;
    a one-line UserError if the address is malformed or nothing answers within JOIN_CHECK_SECONDS. A command can
    call it when it starts, before any other work."""
    host, port = split_address(address)
    try:
        socket.create_connection((host, port), timeout=JOIN_CHECK_SECONDS).close()
    except OSError as error:
        reason = error.strerror or f"no answer within {JOIN_CHECK_SECONDS:g} s"
        raise UserError(
            f"no Ray cluster answers at {address} ({reason})",
            "start one with `ray start --head` or check the ray_address setting",
        ) from None
    return host


def _use_token_if_available() -> None:
    """Turns token authentication on for this process when a token is available (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and RAY_AUTH_MODE is unset: what Ray does itself for a cluster it
    finds on its own but not for an explicit address, and harmless against a head without authentication."""
    from ray._private.authentication import authentication_token_setup as setup

    log = logging.getLogger(setup.__name__)
    level = log.level
    log.setLevel(logging.ERROR)  # Ray warns that it enabled token authentication: as asked, not news
    try:
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        log.setLevel(level)

"""loraserve on Ray Serve: an ingress and N engine replicas, adapters routed by affinity.

Three ways in, one builder:

- Python: ``serve.run(build_app(engine_config=..., server_config=..., num_replicas=2))``;
- Serve's CLI: ``serve run loraserve.distributed.ray_serve:build_app model=DIR
  num_replicas=2 enable_lora=true`` (each ``key=value`` is the ``loraserve serve`` flag
  ``--key value``; ``true`` alone means the flag);
- ``loraserve serve MODEL --num-replicas N [--ray-address ADDR]`` (``serve_with_ray``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import tempfile
import threading
from dataclasses import dataclass

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from loraserve.distributed.ingress import LoRAIngress
from loraserve.distributed.replica import LoRAReplica
from loraserve.distributed.router import AdapterAffinityRouter

logger = logging.getLogger(__name__)

APP_NAME = "loraserve"
ROUTING_STATS_PERIOD_S = 1.0  # how often the router asks replicas for record_routing_stats


@dataclass
class RayOptions:
    """How the replicas are laid out and routed (``--num-replicas`` and friends)."""

    num_replicas: int = 1
    affinity_router: bool = False  # opt-in: Ray's stock multiplex routing otherwise
    epsilon: float = 1.0  # the affinity bound's slack: holders up to (1 + e) x mean + 1
    replica_cpus: float = 1.0  # CPUs Ray reserves per replica; torch uses that many threads
    replica_gpus: float = 0.0  # GPUs per replica (with --device cuda)
    max_adapters: int | None = None  # adapters a replica keeps (default: --max-cpu-loras)
    state_dir: str | None = None  # the shared registry folder (default: a new temp folder)


def _configs_from_strings(args: dict[str, str]):  # noqa: ANN202 - (EngineConfig, ServerConfig)
    """Serve CLI's ``key=value`` pairs, read by ``loraserve serve``'s own parser."""
    from loraserve.entrypoints.cli_args import add_serve_flags, configs_from_args

    argv = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if str(value).lower() == "true" else [flag, str(value)]
    parser = argparse.ArgumentParser(prog="loraserve.distributed.ray_serve:build_app")
    add_serve_flags(parser)
    parsed = parser.parse_args(argv)
    engine_config, server_config = configs_from_args(parsed)
    return engine_config, server_config, ray_options_from_args(parsed)


def ray_options_from_args(args: argparse.Namespace) -> RayOptions:
    return RayOptions(num_replicas=args.num_replicas or 1,
                      affinity_router=args.affinity_router,
                      replica_cpus=args.replica_cpus,
                      state_dir=args.registry_dir)


def build_app(args: dict[str, str] | None = None, *, engine_config=None,  # noqa: ANN001
              server_config=None, options: RayOptions | None = None,  # noqa: ANN001
              **option_overrides) -> serve.Application:
    """The Serve application: ``LoRAIngress`` over ``num_replicas`` ``LoRAReplica``s."""
    if args is not None:
        engine_config, server_config, options = _configs_from_strings(args)
    options = options or RayOptions()
    for key, value in option_overrides.items():
        setattr(options, key, value)
    state_dir = options.state_dir or tempfile.mkdtemp(prefix="loraserve-ray-")
    router = None
    if options.affinity_router:
        router = RequestRouterConfig(
            request_router_class=AdapterAffinityRouter,
            request_router_kwargs={"epsilon": options.epsilon},
            request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
        )
    replica_options = dict(
        num_replicas=options.num_replicas,
        max_ongoing_requests=2 * engine_config.max_num_seqs,  # a batch, and a batch waiting
        ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
        health_check_period_s=2,
    )
    if router is not None:
        replica_options["request_router_config"] = router
    replicas = LoRAReplica.options(**replica_options).bind(
        engine_config, server_config, state_dir,
        options.max_adapters or engine_config.max_cpu_loras,
    )
    base_names = [str(engine_config.served_model_name), *server_config.served_model_aliases]
    return LoRAIngress.options(
        max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0},
    ).bind(replicas, base_names, server_config.api_key, state_dir)


def serve_with_ray(engine_config, server_config, options: RayOptions,  # noqa: ANN001
                   ray_address: str | None = None) -> int:
    """``loraserve serve ... --num-replicas N``: start (or join) Ray, serve until a signal."""
    temporary = None
    if options.state_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="loraserve-ray-")
        options.state_dir = temporary.name
    ray.init(address=ray_address, ignore_reinit_error=True)
    try:
        serve.start(http_options={"host": server_config.host, "port": server_config.port})
        serve.run(build_app(engine_config=engine_config, server_config=server_config,
                            options=options), name=APP_NAME, route_prefix="/")
        url = f"http://{server_config.host}:{server_config.port}"
        print(f"loraserve is ready on {url} with {options.num_replicas} replicas through "
              "Ray Serve (Ctrl+C to stop)", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
        if temporary is not None:
            temporary.cleanup()
    return 0

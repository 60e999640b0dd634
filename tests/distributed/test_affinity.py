"""The bounded-load affinity policy's choices, and the Ray router that wraps it, on fake
replicas (no cluster)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from loraserve.distributed.affinity import AffinityPolicy, ReplicaLoad


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def policy(epsilon: float = 0.25, memory_s: float = 0.5) -> tuple[AffinityPolicy, Clock]:
    clock = Clock()
    return AffinityPolicy(epsilon, memory_s, clock=clock, rng=random.Random(0)), clock


def test_a_holder_within_the_bound_serves_its_adapter():
    p, _ = policy()
    replicas = [ReplicaLoad("r0", 0), ReplicaLoad("r1", 2, frozenset({"sql"})), ReplicaLoad("r2", 1)]
    # mean 1, bound (1.25 x 1) + 1 = 2.25: the holder at 2 is within it
    assert p.rank("sql", replicas)[0] == "r1"


def test_the_least_loaded_holder_wins():
    p, _ = policy()
    replicas = [ReplicaLoad("r0", 3, frozenset({"sql"})), ReplicaLoad("r1", 1, frozenset({"sql"})),
                ReplicaLoad("r2", 2)]
    assert p.choose("sql", replicas) == "r1"


def test_an_overloaded_holder_gives_way_to_the_least_loaded_replica():
    p, _ = policy()
    replicas = [ReplicaLoad("r0", 9, frozenset({"sql"})), ReplicaLoad("r1", 0), ReplicaLoad("r2", 3)]
    # mean 4, bound 6: the holder at 9 is over it, so the idle replica loads the adapter
    ranked = p.rank("sql", replicas)
    assert ranked == ["r1", "r2", "r0"]


def test_a_cold_burst_follows_its_first_placement_until_the_bound():
    p, _ = policy(epsilon=1.0)
    loads = {"r0": 0, "r1": 0}
    placed = []
    for _ in range(4):  # no replica reports the adapter yet: only the memory knows
        chosen = p.choose("new", [ReplicaLoad(r, n) for r, n in loads.items()])
        loads[chosen] += 1
        placed.append(chosen)
    assert len(set(placed)) == 1, placed


def test_a_placement_is_forgotten_after_the_memory():
    p, clock = policy(memory_s=0.5)
    first = p.choose("new", [ReplicaLoad("r0", 0), ReplicaLoad("r1", 0)])
    clock.now = 1.0  # remembered no more, and never reported: the least loaded wins
    other = "r1" if first == "r0" else "r0"
    loads = {first: 1, other: 0}
    assert p.choose("new", [ReplicaLoad(r, n) for r, n in loads.items()]) == other


def test_base_requests_go_to_the_less_loaded_of_two():
    p, _ = policy()
    two = [ReplicaLoad("busy", 5), ReplicaLoad("idle", 0)]
    assert all(p.choose(None, two) == "idle" for _ in range(20))
    many = [ReplicaLoad(f"r{i}", i) for i in range(8)]
    chosen = {p.choose(None, many) for _ in range(200)}
    assert "r7" not in chosen and len(chosen) > 2  # two random choices, not always the best


def test_every_replica_is_ranked_once():
    p, _ = policy()
    replicas = [ReplicaLoad(f"r{i}", i % 3, frozenset({"a"} if i % 2 else ())) for i in range(6)]
    for adapter in ("a", "b", None):
        assert sorted(p.rank(adapter, replicas)) == sorted(r.replica for r in replicas)
    assert p.rank("a", []) == []
    with pytest.raises(ValueError):
        AffinityPolicy(epsilon=-1)


# ---- the Ray router over the same policy ---------------------------------------------------
ray_router = pytest.importorskip("loraserve.distributed.router", reason="needs loraserve[ray]")


class FakeReplica(SimpleNamespace):
    """What the router reads of ``RunningReplica``."""


def make_router(queue_lens: dict[str, int | None]):
    router = ray_router.AdapterAffinityRouter.__new__(ray_router.AdapterAffinityRouter)
    router.initialize_state(epsilon=0.25)
    cache = SimpleNamespace(get=lambda replica_id: queue_lens.get(replica_id))
    type(router).replica_queue_len_cache = property(lambda self: cache)
    return router


def pending(model_id: str):
    return SimpleNamespace(metadata=SimpleNamespace(multiplexed_model_id=model_id),
                           routing_context=SimpleNamespace(should_backoff=False))


async def test_the_ray_router_ranks_holders_from_reports_and_routing_stats():
    r0 = FakeReplica(replica_id="r0", multiplexed_model_ids={"sql"}, routing_stats={})
    r1 = FakeReplica(replica_id="r1", multiplexed_model_ids=set(),
                     routing_stats={"adapters": ["chat"], "queue": 1, "running": 1})
    r2 = FakeReplica(replica_id="r2", multiplexed_model_ids=set(), routing_stats={})
    router = make_router({"r0": 1, "r1": None, "r2": 0})  # r1's load: its stats, 2
    request = pending("sql")
    ranks = await router.choose_replicas([r0, r1, r2], request)
    assert [rank[0].replica_id for rank in ranks] == ["r0", "r2", "r1"]
    assert request.routing_context.should_backoff  # all were ranked: back off, don't spin
    ranks = await router.choose_replicas([r0, r1, r2], pending("chat"))
    assert ranks[0][0].replica_id == "r1"  # known from record_routing_stats alone
    ranks = await router.choose_replicas([r0, r1, r2], pending(""))
    assert ranks[0][0].replica_id in {"r0", "r2"}  # base model: never the busiest
    assert await router.choose_replicas([], pending("sql")) == []


def test_serve_cli_arguments_build_the_same_configs(llama_dir, tmp_path):
    """``serve run loraserve.distributed.ray_serve:build_app model=... num_replicas=2``: the
    key=value pairs are ``loraserve serve``'s flags (no cluster is needed to build)."""
    from loraserve.distributed import ray_serve

    engine, server, options = ray_serve._configs_from_strings(
        {"model": str(llama_dir), "num_replicas": "3", "enable_lora": "true",
         "max_cpu_loras": "5", "affinity_router": "true", "api_key": "k"})
    assert (engine.model, engine.enable_lora, engine.max_cpu_loras) == (str(llama_dir), True, 5)
    assert server.api_key == "k"
    assert (options.num_replicas, options.affinity_router) == (3, True)
    app = ray_serve.build_app({"model": str(llama_dir), "num_replicas": "2"},
                              state_dir=str(tmp_path))
    assert type(app).__name__ == "Application"

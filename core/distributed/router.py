"""The affinity policy as a Ray Serve request router (``ray.serve.request_router``'s public API).

Ray asks ``choose_replicas`` for ranks of replicas; it then probes the first rank and sends the
request to one with room, falling back rank by rank. A replica's load is the number of requests
Ray has in flight there (its queue-length cache, updated as requests are sent), else what the
replica last reported through ``record_routing_stats``; its adapters are the multiplexed ids it
reported plus those in its routing stats.
"""

from __future__ import annotations

from ray.serve.request_router import (
    MultiplexMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)

from loraserve.distributed.affinity import AffinityPolicy, ReplicaLoad


class AdapterAffinityRouter(MultiplexMixin, RequestRouter):
    def initialize_state(self, epsilon: float = 1.0, memory_s: float = 0.5, **kwargs) -> None:
        """``request_router_kwargs`` of the deployment's ``RequestRouterConfig``."""
        self.policy = AffinityPolicy(epsilon=epsilon, memory_s=memory_s)

    def _load(self, replica: RunningReplica) -> float:
        cached = self.replica_queue_len_cache.get(replica.replica_id)
        if cached is not None:
            return cached
        stats = replica.routing_stats or {}
        return stats.get("queue", 0) + stats.get("running", 0)

    def view(self, replica: RunningReplica) -> ReplicaLoad:
        stats = replica.routing_stats or {}
        adapters = frozenset(replica.multiplexed_model_ids) | frozenset(stats.get("adapters", ()))
        return ReplicaLoad(replica.replica_id, self._load(replica), adapters)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        adapter = None
        if pending_request is not None:
            adapter = pending_request.metadata.multiplexed_model_id
            pending_request.routing_context.should_backoff = True  # every replica was ranked
        by_id = {r.replica_id: r for r in candidate_replicas}
        ranked = self.policy.rank(adapter or None, [self.view(r) for r in candidate_replicas])
        return [[by_id[replica_id]] for replica_id in ranked]

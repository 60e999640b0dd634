"""Bounded-load adapter affinity: which replica serves a request for an adapter.

Rule (consistent hashing with bounded loads, applied to the replicas that hold the adapter):
the least-loaded holder whose load is at most ``(1 + epsilon) * mean + 1`` serves it; when no
holder is within that bound, the least-loaded replica does, and loads the adapter. A placement
is remembered for ``memory_s`` seconds, so the requests of a cold burst follow the first one
before the replica reports the adapter as loaded. Base-model requests go to the less loaded of
two random replicas. The same class decides in Ray (``router``) and in the simulation.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

ReplicaKey = Hashable


@dataclass(frozen=True)
class ReplicaLoad:
    """What the policy knows of one replica: its requests in flight and its adapters."""

    replica: ReplicaKey
    load: float  # requests queued or running there
    adapters: frozenset[str] = field(default_factory=frozenset)


class AffinityPolicy:
    def __init__(self, epsilon: float = 1.0, memory_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, not {epsilon}")
        self.epsilon = epsilon
        self.memory_s = memory_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._placed: dict[str, tuple[ReplicaKey, float]] = {}  # adapter -> (replica, when)

    def bound(self, replicas: Sequence[ReplicaLoad]) -> float:
        """The most load a holder may have and still take the adapter's next request."""
        mean = sum(r.load for r in replicas) / len(replicas)
        return (1 + self.epsilon) * mean + 1

    def rank(self, adapter: str | None, replicas: Sequence[ReplicaLoad]) -> list[ReplicaKey]:
        """Every replica, best first (the caller falls back down the list if one is full)."""
        if not replicas:
            return []
        order = sorted(replicas, key=lambda r: (r.load, self._rng.random()))
        if adapter is None:
            pair = self._rng.sample(list(replicas), min(2, len(replicas)))
            first = min(pair, key=lambda r: r.load)
            return [first.replica] + [r.replica for r in order if r is not first]
        holders = self._holders(adapter, replicas)
        bound = self.bound(replicas)
        within = [r for r in order if r.replica in holders and r.load <= bound]
        first = within[0] if within else order[0]
        if first.replica not in holders or adapter not in first.adapters:
            self._placed[adapter] = (first.replica, self._clock())
        return [first.replica] + [r.replica for r in order if r is not first]

    def choose(self, adapter: str | None, replicas: Sequence[ReplicaLoad]) -> ReplicaKey:
        return self.rank(adapter, replicas)[0]

    def _holders(self, adapter: str, replicas: Sequence[ReplicaLoad]) -> set[ReplicaKey]:
        holders = {r.replica for r in replicas if adapter in r.adapters}
        placed = self._placed.get(adapter)
        if placed is not None:
            replica, when = placed
            if self._clock() - when <= self.memory_s:
                holders.add(replica)
            else:
                del self._placed[adapter]
        if len(self._placed) > 4096:  # forget expired placements of adapters not asked again
            now = self._clock()
            self._placed = {a: p for a, p in self._placed.items() if now - p[1] <= self.memory_s}
        return holders

"""Adapter routing across replicas, simulated: how often a request finds its adapter loaded.

A discrete-event simulation. Requests arrive as a Poisson process; each names one of M
adapters with Zipf(s) popularity. N replicas each run C sequences at once (FIFO queue beyond)
and keep the K adapters used last (LRU); a request whose adapter is not resident waits for a
cold load of ``--cold-s`` seconds, and one replica loads one adapter at a time. Routers see
which adapters a replica holds as it reported them ``--report-s`` seconds ago (Ray pushes
multiplexed ids every 0.1 s; the controller fans them out later).

Routers compared:
- ``round-robin`` and ``power-of-two`` (the less loaded of two random replicas);
- ``ray-stock``: Ray Serve's multiplex routing (holders with room, else the replicas with the
  fewest adapters, two random choices among them);
- ``affinity``: ``loraserve.distributed.affinity.AffinityPolicy``, the class the Ray router
  uses, on the simulation's clock.

Figures per router: hit rate (requests that found the adapter resident or loading), cold
loads per 1,000 requests, load imbalance (max / mean of each replica's busy slot-seconds),
p50 / p99 latency (arrival to finish, in service-time units).

    python benchmarks/routing_sim.py [--replicas 4 --slots 8 --lru 8 --adapters 256
                                      --zipf 1.0 --load 0.7 --requests 40000 --seed 0]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from loraserve.distributed.affinity import AffinityPolicy, ReplicaLoad


@dataclass
class Replica:
    index: int
    slots: int
    lru_size: int
    running: int = 0
    queue: deque = field(default_factory=deque)
    lru: OrderedDict = field(default_factory=OrderedDict)  # adapter -> time it is ready
    loader_free: float = 0.0  # one cold load at a time
    busy: float = 0.0  # slot-seconds of work done (service and cold loads)
    reported: frozenset = frozenset()

    @property
    def load(self) -> int:
        return self.running + len(self.queue)


@dataclass
class Request:
    arrival: float
    adapter: str
    service: float
    hit: bool = False


class Simulation:
    def __init__(self, args: argparse.Namespace, router: str, seed: int) -> None:
        self.args = args
        self.rng = random.Random(seed)
        self.now = 0.0
        self.replicas = [Replica(i, args.slots, args.lru) for i in range(args.replicas)]
        self.events: list = []
        self.counter = itertools.count()
        self.latencies: list[float] = []
        self.hits = self.cold_loads = 0
        self.route = self._router(router)

    # ---- routers ---------------------------------------------------------------------
    def _router(self, name: str) -> Callable[[str], Replica]:
        replicas, rng = self.replicas, self.rng
        if name == "round-robin":
            turn = itertools.cycle(replicas)
            return lambda adapter: next(turn)
        if name == "power-of-two":
            return lambda adapter: min(rng.sample(replicas, 2), key=lambda r: r.load)
        if name == "ray-stock":
            return self._ray_stock
        if name == "affinity":
            policy = AffinityPolicy(epsilon=self.args.epsilon, memory_s=self.args.memory_s,
                                    clock=lambda: self.now, rng=rng)

            def affinity(adapter: str) -> Replica:
                views = [ReplicaLoad(r.index, r.load, r.reported) for r in replicas]
                return replicas[policy.choose(adapter, views)]

            return affinity
        raise ValueError(name)

    def _ray_stock(self, adapter: str) -> Replica:
        """Ray's MultiplexMixin ranks, then its power-of-two choice on queue length."""
        room = self.args.slots  # max_ongoing_requests: the batch size
        holders = [r for r in self.replicas if adapter in r.reported and r.load < room]
        if not holders:
            fewest = min(len(r.reported) for r in self.replicas)
            holders = [r for r in self.replicas if len(r.reported) == fewest]
        pair = self.rng.sample(holders, min(2, len(holders)))
        return min(pair, key=lambda r: r.load)

    # ---- events ----------------------------------------------------------------------
    def push(self, when: float, kind: str, payload: object) -> None:
        heapq.heappush(self.events, (when, next(self.counter), kind, payload))

    def run(self) -> dict[str, float]:
        args = self.args
        weights = [1 / (k + 1) ** args.zipf for k in range(args.adapters)]
        names = [f"a{k}" for k in range(args.adapters)]
        rate = args.load * args.replicas * args.slots / args.service_s
        t = 0.0
        for _ in range(args.requests):
            t += self.rng.expovariate(rate)
            adapter = self.rng.choices(names, weights)[0]
            service = self.rng.expovariate(1 / args.service_s)
            self.push(t, "arrive", Request(t, adapter, service))
        report = 0.0
        while report < t:
            self.push(report, "report", None)
            report += args.report_s
        while self.events:
            self.now, _, kind, payload = heapq.heappop(self.events)
            if kind == "arrive":
                replica = self.route(payload.adapter)
                replica.queue.append(payload)
                self._start(replica)
            elif kind == "finish":
                replica, request = payload
                replica.running -= 1
                self.latencies.append(self.now - request.arrival)
                self._start(replica)
            else:  # what the routers see of each replica
                for replica in self.replicas:
                    replica.reported = frozenset(replica.lru)
        return self._figures()

    def _start(self, replica: Replica) -> None:
        while replica.queue and replica.running < replica.slots:
            request = replica.queue.popleft()
            replica.running += 1
            ready = replica.lru.get(request.adapter)
            if ready is None:  # a cold load, after the one in progress
                self.cold_loads += 1
                ready = max(self.now, replica.loader_free) + self.args.cold_s
                replica.loader_free = ready
                replica.lru[request.adapter] = ready
                if len(replica.lru) > replica.lru_size:
                    replica.lru.popitem(last=False)
            else:
                self.hits += 1
                replica.lru.move_to_end(request.adapter)
            finish = max(self.now, ready) + request.service
            replica.busy += finish - self.now
            self.push(finish, "finish", (replica, request))

    def _figures(self) -> dict[str, float]:
        n = len(self.latencies)
        ordered = sorted(self.latencies)
        busy = [r.busy for r in self.replicas]
        return {
            "hit_rate": self.hits / n,
            "cold_per_1000": 1000 * self.cold_loads / n,
            "imbalance": max(busy) / (sum(busy) / len(busy)),
            "p50": ordered[n // 2] / self.args.service_s,
            "p99": ordered[int(n * 0.99)] / self.args.service_s,
        }


ROUTERS = ("round-robin", "power-of-two", "ray-stock", "affinity")


def simulate(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Each router's figures, averaged over ``--runs`` seeds (the same seeds for all)."""
    results = {}
    for router in ROUTERS:
        runs = [Simulation(args, router, args.seed + k).run() for k in range(args.runs)]
        results[router] = {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=4)  # N
    parser.add_argument("--slots", type=int, default=8)  # C: sequences a replica runs at once
    parser.add_argument("--lru", type=int, default=8)  # K: adapters a replica keeps
    parser.add_argument("--adapters", type=int, default=256)  # M
    parser.add_argument("--zipf", type=float, default=1.0)  # s
    parser.add_argument("--load", type=float, default=0.7)  # arrival rate / total slots
    parser.add_argument("--service-s", type=float, default=1.0)  # mean time of one request
    parser.add_argument("--cold-s", type=float, default=0.2)  # one cold load
    parser.add_argument("--report-s", type=float, default=0.5)  # routers' view of adapters
    parser.add_argument("--epsilon", type=float, default=1.0)  # the affinity bound's slack
    parser.add_argument("--memory-s", type=float, default=0.5)  # placements remembered
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"N={args.replicas} C={args.slots} K={args.lru} M={args.adapters} s={args.zipf} "
          f"load={args.load} cold={args.cold_s}s report={args.report_s}s "
          f"requests={args.requests} x {args.runs} seeds")
    print(f"{'router':<14}{'hit rate':>10}{'cold/1000':>11}{'imbalance':>11}{'p50':>7}{'p99':>7}")
    for router, f in simulate(args).items():
        print(f"{router:<14}{f['hit_rate']:>9.1%}{f['cold_per_1000']:>11.0f}"
              f"{f['imbalance']:>11.3f}{f['p50']:>7.2f}{f['p99']:>7.2f}")


if __name__ == "__main__":
    main()

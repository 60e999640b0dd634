"""The shared registry folder and the per-replica metrics merge (no cluster)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loraserve.distributed.registry import AdapterRegistry
from loraserve.distributed.replica_metrics import merge_expositions


def test_entries_record_loads_and_unloads_under_any_name(tmp_path):
    registry = AdapterRegistry(tmp_path)
    assert registry.entries() == {} and registry.version() == 0
    registry.record("org/sql adapter", "/adapters/sql")
    registry.record("chat", "/adapters/chat")
    registry.record("chat", None)
    entries = registry.entries()
    assert {name: path for name, (path, _) in entries.items()} == {
        "org/sql adapter": "/adapters/sql", "chat": None}
    assert AdapterRegistry(tmp_path).entries() == entries  # another process agrees


def test_only_fresh_replica_reports_count(tmp_path):
    registry = AdapterRegistry(tmp_path)
    registry.report("r1", [("sql", "/a/sql")], "", extra={"loads": {"sql": 1}})
    registry.report("r2", [], "")
    [r1, r2] = registry.reports()
    assert r1.adapters == (("sql", "/a/sql"),) and r1.extra == {"loads": {"sql": 1}}
    time.sleep(0.05)
    assert registry.reports(fresh_s=0.01) == []
    registry.forget_replica("r2")
    assert [r.replica for r in registry.reports()] == ["r1"]


def _exposition(requests: float, running: float) -> str:
    registry = CollectorRegistry()
    Counter("loraserve_requests", "Requests.", ["model"], registry=registry).labels("sql").inc(requests)
    Gauge("loraserve_running_requests", "Running.", registry=registry).set(running)
    return generate_latest(registry).decode()


def test_merged_metrics_keep_one_family_per_name_and_label_each_replica():
    merged = merge_expositions([("r1", _exposition(3, 1)), ("r2", _exposition(5, 0))])
    families = {f.name: f for f in text_string_to_metric_families(merged.decode())}
    requests = {(s.labels["replica"], s.labels["model"]): s.value
                for s in families["loraserve_requests"].samples if s.name.endswith("_total")}
    assert requests == {("r1", "sql"): 3.0, ("r2", "sql"): 5.0}
    running = {s.labels["replica"]: s.value for s in families["loraserve_running_requests"].samples}
    assert running == {"r1": 1.0, "r2": 0.0}
    assert merged.decode().count("# TYPE loraserve_requests_total counter") == 1

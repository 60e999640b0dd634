"""The bounded adapter labels of loraserve's per-model series, and the OpenMetrics escaping
asked of prometheus_client, on a registry of the test's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from loraserve.metrics import OTHER_ADAPTERS, AdapterLabels, openmetrics_accept


def test_adapter_labels_are_capped_and_dropped_with_their_adapter():
    registry = CollectorRegistry()
    requests = Counter("requests", "x", ["model", "finish_reason"], registry=registry)
    labels = AdapterLabels((requests,), limit=2)

    def count(lora_name: str | None) -> None:
        labels.labels(requests, lora_name, "base", finish_reason="stop").inc()

    def models() -> set[str]:
        return {s.labels["model"] for m in registry.collect() for s in m.samples}

    for name in ("a", "b", "c"):
        labels.register(name)
        count(name)
    count(None)
    assert models() == {"a", "b", OTHER_ADAPTERS, "base"}  # c is past the cap

    labels.register("b")  # a second engine registers b too
    labels.unregister("b")
    assert "b" in models()  # still registered once
    labels.unregister("a")
    count("a")  # a request still running after the unload
    assert models() == {"b", OTHER_ADAPTERS, "base"}
    assert registry.get_sample_value("requests_total", {"model": OTHER_ADAPTERS,
                                                        "finish_reason": "stop"}) == 2
    labels.register("d")  # a's place is free again
    count("d")
    assert "d" in models()


def test_openmetrics_scrapes_ask_for_names_as_they_are():
    assert openmetrics_accept("") == ""
    assert openmetrics_accept("text/plain") == "text/plain"
    assert openmetrics_accept("application/openmetrics-text") == (
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8")
    assert openmetrics_accept(
        "application/openmetrics-text; version=1.0.0; escaping=underscores; q=0.9,text/plain;q=0.5"
    ) == "application/openmetrics-text;version=1.0.0;q=0.9;escaping=allow-utf-8,text/plain;q=0.5"

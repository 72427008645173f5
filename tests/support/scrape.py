"""Reading a ``GET /metrics`` answer (Prometheus text) in the tests, through
prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the exposition has no such sample."""
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def http(route: str, method: str, status: int) -> dict[str, str]:
    """The labels of ``ser_http_requests_total`` for one route template, method and status."""
    return {"route": route, "method": method, "status": str(status)}

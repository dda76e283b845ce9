"""Read a /metrics page with prometheus_client's own parser, for tests of what a scraper sees."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """One parsed exposition: each family's HELP text and samples (name, labels, value)."""

    help: dict[str, str]
    samples: dict[str, list[tuple[str, dict[str, str], float]]]

    def empty_families(self) -> list[str]:
        """Families that are declared (HELP, TYPE) but have no sample at all."""
        return sorted(name for name, samples in self.samples.items() if not samples)

    def value(self, sample: str, **labels: str) -> float:
        """The value of the sample `sample` with exactly these labels (0 when there is none)."""
        for family in self.samples.values():
            for name, have, value in family:
                if name == sample and have == labels:
                    return value
        return 0.0


def parse(text: str) -> Scrape:
    """Parse `text`; raises ValueError when it is not valid Prometheus text exposition."""
    helps: dict[str, str] = {}
    samples: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        helps[family.name] = family.documentation
        samples[family.name] = [(s.name, dict(s.labels), float(s.value)) for s in family.samples]
    return Scrape(helps, samples)


def scrape(url: str) -> Scrape:
    """GET `url` and parse it."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse(response.read().decode())

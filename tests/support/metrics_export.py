"""Reading a local Ray's Prometheus export: the module's Ray (tests/conftest.py's `ray_session`) serves every
process's metrics on `metrics_port()`; tests scrape it and wait until the values they expect arrive (Ray reports
every few seconds)."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "mmr5-batch.json"
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\} (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

_PORT = 0  # the metrics export port of the running module's Ray, chosen just before it binds it

Samples = dict[str, list[tuple[dict[str, str], float]]]


def pick_metrics_port() -> int:
    global _PORT
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        _PORT = probe.getsockname()[1]
    return _PORT


def metrics_port() -> int:
    return _PORT


def scrape(prefix: str = "") -> Samples:
    """Every sample whose name contains `prefix` that the node's Prometheus endpoint serves now: name -> (labels, value)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{_PORT}/metrics", timeout=10).read().decode()
    except OSError:
        return {}
    samples: Samples = defaultdict(list)
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and prefix in match["name"]:
            samples[match["name"]].append((dict(LABEL.findall(match["labels"])), float(match["value"])))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """A metric summed over the processes that reported it (each worker is its own series) with these labels."""
    return sum(value for found, value in samples.get(name, []) if all(found.get(key) == wanted for key, wanted in labels.items()))


def wait_for(expected: dict[tuple[str, tuple[tuple[str, str], ...]], float], prefix: str = "", deadline_s: float = 180.0) -> Samples:
    """Scrape until every expected (name, labels) total has its value; the last scrape."""
    started = time.monotonic()
    while True:
        samples = scrape(prefix)
        if all(total(samples, name, **dict(labels)) == value for (name, labels), value in expected.items()):
            return samples
        if time.monotonic() - started > deadline_s:
            got = {name: (total(samples, name, **dict(labels)), value) for (name, labels), value in expected.items()}
            raise AssertionError(f"metrics never reached the expected values (got, expected): {got}")
        time.sleep(1.0)


def dashboard_metrics(prefix: str) -> set[str]:
    """The metrics with this prefix that the Grafana dashboard's panels and variables name."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [variable["query"] for variable in dashboard["templating"]["list"] if variable["type"] == "query"]
    return {name for query in queries for name in re.findall(prefix + r"\w+", query)}

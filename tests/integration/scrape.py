"""Read one sample from a running service's ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

import re

import httpx


def metric(url: str, name: str, **labels: str) -> float:
    """The value of ``name`` with exactly ``labels`` at ``url/metrics``; 0 when absent
    (a labelled counter appears only once it was first incremented)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
            return float(match.group(2))
    return 0.0

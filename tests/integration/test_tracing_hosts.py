"""One upload is one trace across the test hosts (docs/OPERATIONS.md "Tracing").

Test hosts (tests/peers/hosts.py): ``pacs`` (Orthanc), ``listener``, ``gateway``,
``classifier``, ``detector``. Every service runs with ``TRACING=file``: each process
appends its spans to its own JSON-lines file, its host named by ``OTEL_RESOURCE_ATTRIBUTES``.
Orthanc sends one instance to the listener by C-STORE; once the SR and presentation
state are back in Orthanc, the spans of all the files are read: the instance is one
trace, with spans from the listener, gateway, classifier and detector hosts, each
parent link the stage that called it, and the gateway's log line names the request id
and the trace id together.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.listener import Listener, start_listener
from tests.integration.multihost import (
    Secrets,
    start_gateway,
    start_model_service,
    wait_all_ready,
)
from tests.integration.stack import Service
from tests.integration.test_dicom_listener import _phantom, study_of, wait_for_results
from tests.peers.hosts import host_network
from tests.peers.orthanc import Orthanc, require_orthanc

pytestmark = pytest.mark.timeout(900)

MODALITY = "SPINE"
HOSTS = ("pacs", "listener", "gateway", "classifier", "detector")


@dataclass
class TracedSite:
    orthanc: Orthanc
    listener: Listener
    gateway: Service
    traces: Path


def _traced(folder: Path, host: str) -> dict[str, str]:
    return {"TRACING": "file", "TRACING_DIR": str(folder),
            "OTEL_RESOURCE_ATTRIBUTES": f"host.name={host}"}


@pytest.fixture(scope="module")
def site(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedSite]:
    require_orthanc()
    root = tmp_path_factory.mktemp("tracing")
    traces = root / "traces"
    with host_network() as net:
        pacs, listener_host, gateway_host, classifier_host, detector_host = (
            net.add(name) for name in HOSTS)
        keys = Secrets()
        classifier = start_model_service(classifier_host, "classifier", tiny_bundle, root, keys,
                                         **_traced(traces, "classifier"))
        detector = start_model_service(detector_host, "detector", tiny_bundle, root, keys,
                                       **_traced(traces, "detector"))
        gateway = start_gateway(
            gateway_host, root, keys, classifiers=f"http://{classifier_host.address}:8001",
            detectors=f"http://{detector_host.address}:8002", **_traced(traces, "gateway"))
        orthanc = Orthanc(root / "orthanc", address=pacs.address, wrap=tuple(pacs.command([])))
        orthanc.start()
        wait_all_ready(classifier, detector, gateway)
        listener = start_listener(
            root / "listener", gateway.url, address=listener_host.address,
            wrap=tuple(listener_host.command([])), status_headers=keys.operator_header,
            LISTENER_ALLOWED_AE_TITLES="ORTHANC", OPERATOR_KEYS_SHA256=keys.operator_keys_sha256(),
            RESULTS_STORE_AE=orthanc.store_ae, **_traced(traces, "listener"),
        )
        try:
            orthanc.add_modality(MODALITY, listener.ae_title, listener.address, listener.port)
            yield TracedSite(orthanc, listener, gateway, traces)
        finally:
            listener.stop()
            orthanc.stop()


def _read_spans(folder: Path) -> list[dict[str, Any]]:
    spans = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                span = json.loads(line)
                span["host"] = span["resource"]["attributes"].get("host.name")
                span["id"] = span["context"]["span_id"]
                span["trace"] = span["context"]["trace_id"]
                spans.append(span)
    return spans


def _trace_of_the_upload(folder: Path, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The spans of the one trace a C-STORE began, once its result delivery has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = _read_spans(folder)
        roots = [s for s in spans if s["name"] == "C-STORE receive"]
        assert len(roots) <= 1, "one instance sent, one C-STORE"
        trace = [s for s in spans if roots and s["trace"] == roots[0]["trace"]]
        if any(s["name"].startswith("deliver to") for s in trace):
            return trace
        if time.monotonic() > deadline:
            raise AssertionError(f"no delivery span in the upload's trace: "
                                 f"{sorted({s['name'] for s in spans})}")
        time.sleep(0.2)


def _ms(span: dict[str, Any]) -> float:
    start, end = (datetime.fromisoformat(span[k].replace("Z", "+00:00"))
                  for k in ("start_time", "end_time"))
    return (end - start).total_seconds() * 1000


def _tree(spans: list[dict[str, Any]], parent: str | None = None, depth: int = 0) -> list[str]:
    lines = []
    for span in sorted((s for s in spans if s["parent_id"] == parent),
                       key=lambda s: s["start_time"]):
        lines.append(f"{'  ' * depth}{span['name']} [{span['host']}] {_ms(span):.1f} ms")
        lines += _tree(spans, span["id"], depth + 1)
    return lines


def _one(spans: list[dict[str, Any]], name: str, host: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name and s["host"] == host]
    assert len(found) == 1, f"{name} on {host}: {len(found)} spans"
    return found[0]


def test_one_upload_is_one_trace_across_every_host_it_touched(site: TracedSite) -> None:
    study, files, _ = study_of(_phantom(0))
    ids = [site.orthanc.upload(data) for data in files]
    answer = site.orthanc.store_to_modality(MODALITY, ids)
    assert answer.get("FailedInstancesCount", 0) == 0, answer
    wait_for_results(site.orthanc, study, 1)
    trace = _trace_of_the_upload(site.traces)
    print("\n[tracing] one C-STORE's trace:\n" + "\n".join(_tree(trace)))

    assert {s["host"] for s in trace} == {"listener", "gateway", "classifier", "detector"}
    by_id = {s["id"]: s for s in trace}
    (root,) = [s for s in trace if s["parent_id"] is None]
    assert (root["name"], root["host"]) == ("C-STORE receive", "listener")
    assert all(s["parent_id"] in by_id for s in trace if s is not root), "no dangling parent"
    for server in (s for s in trace if s["kind"] == "SpanKind.SERVER" and s is not root):
        caller = by_id[server["parent_id"]]
        assert (caller["kind"], caller["host"] != server["host"]) == ("SpanKind.CLIENT", True), (
            f"{server['name']} on {server['host']} called by {caller['name']}")

    def parent(name: str, host: str) -> tuple[str, str]:
        span = by_id[_one(trace, name, host)["parent_id"]]
        return span["name"], span["host"]

    assert parent("process instance", "listener") == ("C-STORE receive", "listener")
    assert parent("forward to gateway", "listener") == ("process instance", "listener")
    assert parent("POST /upload/dicom", "gateway") == ("forward to gateway", "listener")
    assert parent("decode", "gateway") == ("POST /upload/dicom", "gateway")
    workers = [s for s in trace if s["name"].startswith("decode worker")]
    assert workers and all(by_id[s["parent_id"]]["name"] == "decode" for s in workers)
    assert parent("fusion", "gateway") == ("POST /upload/dicom", "gateway")
    assert parent("write results", "gateway") == ("POST /upload/dicom", "gateway")
    for model in ("classifier", "detector"):
        assert parent(f"call {model}", "gateway") == ("POST /upload/dicom", "gateway")
        infer = [s for s in trace if s["host"] == model and s["name"].endswith("/infer")]
        assert infer and all(by_id[s["parent_id"]]["name"] == f"call {model}" for s in infer)
        for stage in ("queue wait", "inference"):
            assert parent(stage, model)[0].endswith("/infer"), (stage, model)
    deliveries = [s for s in trace if s["name"].startswith("deliver to")]
    assert all(by_id[s["parent_id"]]["name"] == "process instance" for s in deliveries)

    request_id = _one(trace, "POST /upload/dicom", "gateway")["attributes"]["spine.request_id"]
    trace_id = root["trace"].removeprefix("0x")
    logged = [json.loads(line) for line in site.gateway.log_text().splitlines()
              if line.startswith("{") and request_id in line]
    assert any(entry.get("trace_id") == trace_id for entry in logged), (
        "a gateway log line names the request id and the trace id together")

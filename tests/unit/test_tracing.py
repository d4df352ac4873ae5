"""shared/tracing.py: W3C trace context carried across a hop, spans written by the file
exporter, the log line naming trace and request, and nothing at all when off."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from model_server.batching import DynamicBatcher
from shared import tracing
from shared.logging import JsonFormatter, request_id_var
from shared.settings import CommonSettings

# version 00, trace id, parent span id, flags with "sampled" set (01; 03 adds "random").
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[13]$")


@pytest.fixture
def spans_dir(tmp_path: Path) -> Iterator[Path]:
    tracing.configure_tracing("unit", "file", directory=tmp_path)
    try:
        yield tmp_path
    finally:
        tracing.shutdown_tracing()


def _spans(folder: Path) -> dict[str, dict[str, Any]]:
    """Spans written so far, by name (the names in these tests are unique)."""
    spans = {}
    for path in folder.glob("unit-*.jsonl"):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            spans[span["name"]] = span
    return spans


def _ids(span: dict[str, Any]) -> tuple[str, str]:
    """(trace id, span id) as 32 and 16 hex digits, as W3C writes them."""
    context = span["context"]
    return context["trace_id"].removeprefix("0x"), context["span_id"].removeprefix("0x")


def test_a_carrier_continues_the_trace_in_the_span_that_picks_the_work_up(
    spans_dir: Path,
) -> None:
    with tracing.span("sender"):
        carrier = tracing.carrier()
    assert set(carrier) == {"traceparent"} and TRACEPARENT.match(carrier["traceparent"])
    with tracing.span("unrelated"), tracing.span("receiver", parent=carrier):
        pass
    spans = _spans(spans_dir)
    sender_trace, sender_span = _ids(spans["sender"])
    assert _ids(spans["receiver"])[0] == sender_trace
    assert spans["receiver"]["parent_id"].removeprefix("0x") == sender_span
    assert _ids(spans["unrelated"])[0] != sender_trace
    assert spans["sender"]["parent_id"] is None
    assert spans["sender"]["resource"]["attributes"]["service.name"] == "unit"


def test_outgoing_headers_name_the_current_span(spans_dir: Path) -> None:
    headers: dict[str, str] = {"X-Request-ID": "r1"}
    request = httpx.Request("POST", "http://model/v2/models/m/infer")
    with tracing.span("caller", kind="client"):
        tracing.inject(headers)
        asyncio.run(tracing.inject_into_request(request))
    trace_id, span_id = _ids(_spans(spans_dir)["caller"])
    for value in (headers["traceparent"], request.headers["traceparent"]):
        assert TRACEPARENT.match(value).groups()[:2] == (trace_id, span_id)  # type: ignore[union-attr]
    assert _spans(spans_dir)["caller"]["kind"] == "SpanKind.CLIENT"


def test_a_malformed_or_missing_traceparent_starts_a_new_trace(spans_dir: Path) -> None:
    with tracing.span("stale"):  # e.g. a connection task still holding an earlier request
        for name, carrier in (("bad", {"traceparent": "00-zz-not-a-context"}), ("none", {})):
            with tracing.span(name, parent=carrier, kind="server"):
                pass
    spans = _spans(spans_dir)
    for name in ("bad", "none"):
        assert spans[name]["parent_id"] is None and len(_ids(spans[name])[0]) == 32
        assert _ids(spans[name])[0] != _ids(spans["stale"])[0]


def test_a_span_measured_elsewhere_keeps_its_times_and_parent(spans_dir: Path) -> None:
    with tracing.span("request"):
        carrier = tracing.carrier()
    start = time.time_ns()
    tracing.record("queue wait", carrier, start, start + 5_000_000, **{"spine.size": 3})
    tracing.record("orphan", {}, start, start + 1)  # no parent: not recorded
    spans = _spans(spans_dir)
    assert "orphan" not in spans
    wait = spans["queue wait"]
    assert wait["parent_id"].removeprefix("0x") == _ids(spans["request"])[1]
    assert wait["attributes"] == {"spine.size": 3}


def test_the_batcher_records_each_requests_queue_wait_and_inference(spans_dir: Path) -> None:
    async def main() -> list[int]:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            lambda items: [item * 2 for item in items], max_batch_size=4, max_delay_ms=50
        )
        await batcher.start()

        async def one(item: int) -> int:
            with tracing.span(f"request {item}"):
                return await batcher.submit(item)

        try:
            return await asyncio.gather(one(1), one(2))
        finally:
            await batcher.stop()

    assert asyncio.run(main()) == [2, 4]
    spans = [json.loads(line) for path in spans_dir.glob("*.jsonl")
             for line in path.read_text().splitlines()]
    requests = {_ids(s)[1]: s["name"] for s in spans if s["name"].startswith("request")}
    children = sorted((requests[s["parent_id"].removeprefix("0x")], s["name"],
                       s["attributes"].get("spine.batch_size"))
                      for s in spans if s["name"] in ("queue wait", "inference"))
    assert children == [("request 1", "inference", 2), ("request 1", "queue wait", None),
                        ("request 2", "inference", 2), ("request 2", "queue wait", None)]


def test_a_log_line_names_the_request_and_its_trace(spans_dir: Path) -> None:
    record = logging.makeLogRecord({"msg": "POST /upload 200", "levelname": "INFO"})
    token = request_id_var.set("req-7")
    try:
        with tracing.span("request"):
            line = json.loads(JsonFormatter("gateway").format(record))
    finally:
        request_id_var.reset(token)
    assert line["request_id"] == "req-7"
    assert line["trace_id"] == _ids(_spans(spans_dir)["request"])[0]


def test_off_is_a_no_op_that_never_imports_the_sdk() -> None:
    code = (
        "import sys, json\n"
        "from shared import tracing\n"
        "from shared.logging import JsonFormatter\n"
        "import logging\n"
        "tracing.configure_tracing('gateway', 'off')\n"
        "with tracing.span('x') as live:\n"
        "    headers = {}\n"
        "    tracing.inject(headers)\n"
        "    out = [live, headers, tracing.carrier(), tracing.trace_id()]\n"
        "tracing.record('y', {'traceparent': '00-' + '1' * 32 + '-' + '2' * 16 + '-01'}, 0, 1)\n"
        "line = JsonFormatter('g').format(logging.makeLogRecord({'msg': 'm'}))\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry.sdk')\n"
        "          or m.startswith('opentelemetry.trace')]\n"
        "print(json.dumps([out, loaded, 'trace_id' in json.loads(line)]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60, check=True)
    assert json.loads(run.stdout) == [[None, {}, {}, None], [], False]


def test_file_tracing_needs_its_folder() -> None:
    with pytest.raises(ValidationError, match="TRACING_DIR"):
        CommonSettings(tracing="file")
    assert CommonSettings(tracing="FILE", tracing_dir="/tmp/t").tracing == "file"
    assert CommonSettings().tracing == "off"


def test_otlp_posts_the_spans_to_the_collector_endpoint() -> None:
    """A stand-in collector on loopback: what the OTLP/HTTP exporter sends it at shutdown."""
    received: list[tuple[str, str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracing.configure_tracing(
            "unit-otlp", "otlp", endpoint=f"http://127.0.0.1:{server.server_port}/"
        )
        with tracing.span("exported span"):
            pass
        tracing.shutdown_tracing()  # flushes the batch
    finally:
        tracing.shutdown_tracing()
        server.shutdown()
    assert [(path, kind) for path, kind, _ in received] == [
        ("/v1/traces", "application/x-protobuf")]
    assert b"exported span" in received[0][2] and b"unit-otlp" in received[0][2]

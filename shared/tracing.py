"""One trace across the services: W3C ``traceparent`` in, spans out, or nothing at all.

Off by default (``TRACING=off``): every helper here is a no-op costing one attribute
read, and OpenTelemetry's SDK is never imported (it is the optional ``tracing`` extra).
``TRACING=otlp`` exports spans in batches over OTLP/HTTP (``OTEL_EXPORTER_OTLP_ENDPOINT``);
``TRACING=file`` writes each span as one JSON line to ``<TRACING_DIR>/<service>-<pid>.jsonl``
as it ends (tests, debugging). docs/OPERATIONS.md "Tracing" says what each span means.

A trace's context crosses a boundary as a *carrier*: a small dict of W3C headers
(``{"traceparent": "00-<trace>-<span>-01"}``), sent as HTTP headers, or kept with work
that waits in a queue (a result delivery, a spooled instance), so that the span which
later picks the work up is the child of the one that queued it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.settings import CommonSettings

TRACEPARENT = "traceparent"
Carrier = dict[str, str]
_KINDS = ("internal", "server", "client", "producer", "consumer")


class _State:
    """The process's tracer, propagator and provider; all None while tracing is off."""

    tracer: Any = None
    propagator: Any = None
    provider: Any = None


_state = _State()


def enabled() -> bool:
    return _state.tracer is not None


def configure_tracing(
    service: str, mode: str, *, directory: Path | None = None, endpoint: str | None = None
) -> None:
    """Start tracing for this process (``mode`` off, file or otlp), once, at its entry point.

    The OpenTelemetry SDK is imported only here, and only when ``mode`` is not off; the
    resource names ``service`` and whatever ``OTEL_RESOURCE_ATTRIBUTES`` adds (the SDK
    reads it itself: a host name, a zone).
    """
    if mode == "off" or _state.tracer is not None:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        raise RuntimeError(
            f"TRACING={mode} needs OpenTelemetry: pip install 'spine-lesion-service[tracing]'"
        ) from exc

    resource = Resource.create({"service.name": service, "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    if mode == "file":
        if directory is None:
            raise ValueError("TRACING=file needs TRACING_DIR")
        provider.add_span_processor(SimpleSpanProcessor(_file_exporter(service, directory)))
    elif mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = f"{endpoint.rstrip('/')}/v1/traces" if endpoint else None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    else:
        raise ValueError(f"unknown tracing mode {mode!r} (off, file or otlp)")
    _state.provider = provider
    _state.propagator = TraceContextTextMapPropagator()
    _state.tracer = provider.get_tracer("spine")


def tracing_from(service: str, settings: CommonSettings) -> None:
    """:func:`configure_tracing` as ``settings`` (``TRACING``, ``TRACING_DIR``, ...) say."""
    configure_tracing(
        service, str(settings.tracing), directory=settings.tracing_dir,
        endpoint=settings.otel_exporter_otlp_endpoint,
    )


def _file_exporter(service: str, directory: Path) -> Any:
    """The SDK's console exporter pointed at a file: one span per line, flushed as it ends."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    directory.mkdir(parents=True, exist_ok=True)
    out = (directory / f"{service}-{os.getpid()}.jsonl").open("a", encoding="utf-8")
    return ConsoleSpanExporter(
        service_name=service, out=out, formatter=lambda span: span.to_json(indent=None) + "\n"
    )


def shutdown_tracing() -> None:
    """Flush and stop the exporter (a service's clean stop); tracing is off afterwards."""
    provider, _state.provider, _state.tracer, _state.propagator = _state.provider, None, None, None
    if provider is not None:
        provider.shutdown()


def _context(carrier: Mapping[str, str] | None) -> Any:
    """The OpenTelemetry context a carrier names; the current one without a carrier."""
    if carrier is None:
        return None
    lowered = {key.lower(): value for key, value in carrier.items()}
    return _state.propagator.extract(lowered)


@contextlib.contextmanager
def _live_span(
    name: str, parent: Mapping[str, str] | None, kind: str, attributes: dict[str, Any]
) -> Iterator[Any]:
    from opentelemetry.trace import SpanKind

    with _state.tracer.start_as_current_span(
        name, context=_context(parent), kind=SpanKind[kind.upper()],
        attributes={k: v for k, v in attributes.items() if v is not None},
    ) as live:
        yield live


def span(
    name: str, *, parent: Mapping[str, str] | None = None, kind: str = "internal",
    **attributes: Any,
) -> contextlib.AbstractContextManager[Any]:
    """A span around a block, the current span's child, or ``parent``'s (a carrier: the
    block's work continues a trace begun elsewhere; ``{}``: it begins a new trace).
    Yields the span, None when off."""
    if _state.tracer is None:
        return contextlib.nullcontext()
    if kind not in _KINDS:
        raise ValueError(f"span kind {kind!r} is not one of {_KINDS}")
    return _live_span(name, parent, kind, attributes)


def annotate(live: Any, *, name: str | None = None, **attributes: Any) -> None:
    """Rename ``live`` (a span from :func:`span`, or None) or add attributes to it."""
    if live is None:
        return
    if name is not None:
        live.update_name(name)
    live.set_attributes({k: v for k, v in attributes.items() if v is not None})


def record(
    name: str, parent: Mapping[str, str] | None, start_ns: int, end_ns: int, **attributes: Any
) -> None:
    """A span measured elsewhere (``time.time_ns()`` bounds): a queue wait, a batch that ran
    on another thread for many requests. No-op when off or without a parent."""
    if _state.tracer is None or not parent:
        return
    live = _state.tracer.start_span(
        name, context=_context(parent), start_time=start_ns,
        attributes={k: v for k, v in attributes.items() if v is not None},
    )
    live.end(end_time=end_ns)


def carrier() -> Carrier:
    """The current span as W3C headers, to hand to work that runs later or elsewhere;
    ``{}`` when off or outside any span."""
    if _state.tracer is None:
        return {}
    headers: Carrier = {}
    _state.propagator.inject(headers)
    return headers


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` to outgoing HTTP ``headers`` (when on)."""
    if _state.tracer is not None:
        _state.propagator.inject(headers)


async def inject_into_request(request: Any) -> None:
    """An ``httpx`` request hook: every request carries the caller's ``traceparent``
    (``event_hooks={"request": [inject_into_request]}``); it runs in the caller's task."""
    if _state.tracer is not None:
        _state.propagator.inject(request.headers)


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), for log lines; None when off or outside."""
    if _state.tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None

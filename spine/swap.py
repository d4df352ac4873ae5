"""``spine swap``: load another bundle into every model service replica, one at a time.

Each replica loads the bundle beside the one it serves and switches when it is ready
(Triton's model repository extension, :mod:`model_server.repository_api`); the gateway
notices from the next answer's ``model_version`` and reads the new facts. One replica at
a time, so a model always has replicas serving (while the replicas of one model disagree,
the gateway keeps those with the facts all agreed on in rotation,
:mod:`gateway.upstream.agreement`). A failed load stops the swap: that replica still
serves its old bundle, and what was swapped is listed (a rollback is a swap back).

Which replicas: the gateway's ``/health`` as an operator sees it (replica URLs; the key
is ``SPINE_API_KEY``, one of the gateway's ``OPERATOR_KEYS_SHA256``), or the URLs named
with ``--replicas``. Every call carries ``INTERNAL_TOKEN``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from shared import contract

# A load builds and warms a bundle up (ONNX exports on first use): minutes on a small CPU.
LOAD_TIMEOUT_S = 900.0
CALL_TIMEOUT_S = 30.0
MODELS = {"classifier": contract.CLASSIFIER_MODEL, "detector": contract.DETECTOR_MODEL}
FACTS = {
    contract.CLASSIFIER_MODEL: (contract.ClassifierFacts, contract.CLASSIFIER_OUTPUTS),
    contract.DETECTOR_MODEL: (contract.DetectorFacts, contract.DETECTOR_OUTPUTS),
}


class SwapError(Exception):
    """The swap cannot start, or stopped; the message says what serves what."""


@dataclass(frozen=True)
class Replica:
    model: str  # OIP model name
    url: str


@dataclass(frozen=True)
class Swapped:
    replica: Replica
    bundle: str  # name (kind), digest


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.json().get("message"))
    except (ValueError, AttributeError):
        return response.text[:300]


def replicas_from_gateway(
    http: httpx.Client, gateway: str, operator_key: str | None
) -> list[Replica]:
    """The replicas the gateway knows (its operator view of ``/health``), classifier first."""
    headers = {"X-API-Key": operator_key} if operator_key else {}
    response = http.get(f"{gateway.rstrip('/')}/health", headers=headers, timeout=CALL_TIMEOUT_S)
    if response.status_code != 200:
        raise SwapError(f"{gateway}/health answered HTTP {response.status_code}: "
                        f"{_error(response)}")
    services = response.json().get("services", {})
    found = [Replica(model, url) for service, model in MODELS.items()
             for url in services.get(service, {}).get("replicas", {})]
    if not found:
        raise SwapError(
            f"{gateway}/health lists no replica URLs: it shows them to operators only. Set "
            "SPINE_API_KEY to an operator key (the gateway's OPERATOR_KEYS_SHA256), or name "
            "the replicas with --replicas"
        )
    return found


def replicas_named(http: httpx.Client, urls: list[str], token: str | None) -> list[Replica]:
    """The replicas at ``urls``, each asked which model it serves; classifier first."""
    found = []
    for url in urls:
        entries = index(http, url, token)
        names = {entry.get("name") for entry in entries}
        model = next((name for name in MODELS.values() if name in names), None)
        if model is None:
            raise SwapError(f"{url} serves none of {sorted(MODELS.values())}")
        found.append(Replica(model, url.rstrip("/")))
    order = list(MODELS.values())
    return sorted(found, key=lambda r: order.index(r.model))


def index(http: httpx.Client, url: str, token: str | None) -> list[dict[str, str]]:
    response = http.post(f"{url}/v2/repository/index", json={}, headers=_headers(token),
                         timeout=CALL_TIMEOUT_S)
    if response.status_code != 200:
        raise SwapError(f"{url}: repository index answered HTTP {response.status_code}: "
                        f"{_error(response)}")
    entries = response.json()
    return [entry for entry in entries if isinstance(entry, dict)]


def bundle_of(http: httpx.Client, replica: Replica, token: str | None) -> str:
    """``name (kind), digest D`` of what the replica serves: the digest answers name."""
    response = http.get(f"{replica.url}/v2/models/{replica.model}/config",
                        headers=_headers(token), timeout=CALL_TIMEOUT_S)
    if response.status_code != 200:
        return f"unknown (config answered HTTP {response.status_code})"
    facts_type, outputs = FACTS[replica.model]
    try:
        facts = contract.facts_from_config(response.json(), facts_type, model=replica.model,
                                           outputs=outputs)
    except (ValueError, contract.ContractError) as exc:
        return f"unknown ({exc})"
    return f"{facts.name} ({facts.kind.value}), digest {contract.facts_digest(facts.identity())}"


def load(http: httpx.Client, replica: Replica, model_dir: str, token: str | None) -> None:
    """Load ``model_dir`` into ``replica``; :class:`SwapError` with its reason if it fails."""
    try:
        response = http.post(
            f"{replica.url}/v2/repository/models/{replica.model}/load",
            json={"parameters": {"model_dir": model_dir}}, headers=_headers(token),
            timeout=LOAD_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        raise SwapError(f"{replica.url}: the load call failed ({type(exc).__name__})") from exc
    if response.status_code != 200:
        raise SwapError(f"{replica.url}: HTTP {response.status_code}: {_error(response)}")


def swap_all(
    http: httpx.Client, replicas: list[Replica], model_dir: str, token: str | None,
    say: Callable[[str], None],
) -> list[Swapped]:
    """Load ``model_dir`` into each replica in turn; stop at the first failure."""
    done: list[Swapped] = []
    for replica in replicas:
        say(f"{replica.model} at {replica.url}: serving {bundle_of(http, replica, token)}; "
            f"loading {model_dir} ...")
        try:
            load(http, replica, model_dir, token)
        except SwapError as exc:
            swapped = ", ".join(s.replica.url for s in done) or "none"
            raise SwapError(
                f"{exc}\nThat replica still serves its previous bundle. Swapped before it: "
                f"{swapped}; not tried: {len(replicas) - len(done) - 1} replica(s). Roll back "
                "with `spine swap --model-dir <the previous folder>`."
            ) from exc
        done.append(Swapped(replica, bundle_of(http, replica, token)))
        say(f"{replica.model} at {replica.url}: now serving {done[-1].bundle}")
    return done

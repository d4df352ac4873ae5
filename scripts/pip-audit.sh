#!/usr/bin/env bash
# Known-vulnerability scan of the pinned dependencies (requirements/constraints.txt,
# i.e. what the images and CI install), with pip-audit against PyPI's advisory data.
#
# Exit status, so CI can call it without being held hostage by the outside world:
#   0  no known vulnerability, or only ones with no fixed release (reported, not fatal),
#      or the advisory service could not be reached (reported, not fatal);
#   1  a vulnerability that a newer release fixes: upgrade the pin (scripts/lock-requirements.sh)
#      or, if it cannot affect this service, list its id in requirements/pip-audit-ignore.txt
#      with the reason.
# Set PIP_AUDIT_STRICT=0 to report fixable findings without failing as well.
# The JSON report goes to test-artifacts/pip-audit.json.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
REPORT=test-artifacts/pip-audit.json
IGNORE_FILE=requirements/pip-audit-ignore.txt
mkdir -p test-artifacts

if ! "$VENV/bin/python" -c "import pip_audit" 2>/dev/null; then
  echo "[pip-audit] pip-audit is not installed in $VENV (it is in the dev extra); skipped"
  exit 0
fi

ignores=()
if [ -f "$IGNORE_FILE" ]; then
  while read -r id _; do
    [[ -z "$id" || "$id" == \#* ]] && continue
    ignores+=(--ignore-vuln "$id")
  done < "$IGNORE_FILE"
fi

# --no-deps: the constraints file is already the complete, resolved set.
# --disable-pip: audit the pins as written, without building a throwaway environment.
timeout "${PIP_AUDIT_TIMEOUT:-600}" "$VENV/bin/python" -m pip_audit \
  -r requirements/constraints.txt --no-deps --disable-pip --progress-spinner off \
  --format json --output "$REPORT" "${ignores[@]}" 2> test-artifacts/pip-audit.log
status=$?

if [ ! -s "$REPORT" ]; then
  echo "[pip-audit] no report (exit $status): the advisory service may be unreachable; not failing"
  tail -5 test-artifacts/pip-audit.log
  exit 0
fi

"$VENV/bin/python" - "$REPORT" <<'PY'
import json, os, sys

report = json.load(open(sys.argv[1]))
fixable, unfixable = [], []
for dep in report.get("dependencies", []):
    for vuln in dep.get("vulns", []):
        line = f"{dep['name']}=={dep.get('version')} {vuln['id']}"
        if vuln.get("fix_versions"):
            fixable.append(f"{line} (fixed in {', '.join(vuln['fix_versions'])})")
        else:
            unfixable.append(f"{line} (no fixed release)")
deps = report.get("dependencies", [])
skipped = [d["name"] for d in deps if d.get("skip_reason")]
if deps and len(skipped) == len(deps):
    print(f"[pip-audit] the advisory data could not be read for any of the {len(deps)} pins "
          "(PyPI's per-release JSON API unreachable from here?): NOTHING WAS CHECKED; not failing")
    sys.exit(0)
print(f"[pip-audit] {len(report.get('dependencies', []))} packages audited, "
      f"{len(fixable)} fixable and {len(unfixable)} unfixable findings"
      + (f", {len(skipped)} not auditable ({', '.join(skipped[:20])})" if skipped else ""))
for line in fixable:
    print(f"[pip-audit] FIXABLE   {line}")
for line in unfixable:
    print(f"[pip-audit] reported  {line}")
strict = os.environ.get("PIP_AUDIT_STRICT", "1") != "0"
sys.exit(1 if fixable and strict else 0)
PY

#!/usr/bin/env bash
# What `spine reading-room` runs besides our services, and what the browser test of our
# results uses: Orthanc + its DICOMweb plugin (Debian) and the OHIF Viewer (npm
# @ohif/app, whose package ships a prebuilt dist/). viewer/package.json
# pins the exact version and viewer/package-lock.json its sha512 integrity; `npm ci`
# installs exactly that and fails on any other bytes. The lock lists @ohif/app alone:
# only its dist/ is served, so none of its build-time dependencies are installed.
# Node.js / npm come from Debian too. Debian packages are installed when run as root.
# Nothing downloads at run or test time. Exits 1 when something is still missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../viewer"
debian_missing() {
  local out=()
  [ -x /usr/sbin/Orthanc ] || out+=(orthanc)
  [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || out+=(orthanc-dicomweb)
  command -v npm >/dev/null 2>&1 || out+=(nodejs npm)
  echo "${out[@]}"
}
# shellcheck source=scripts/debian-packages.sh
. "$here/debian-packages.sh"
install_missing debian_missing
dist=node_modules/@ohif/app/dist/index.html
marker="node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)"
if [ -f "$dist" ] && [ -f "$marker" ]; then exit 0; fi
echo "[setup] npm ci: the OHIF Viewer (@ohif/app, pinned in viewer/package-lock.json)"
if ! npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; then
  echo "[setup] npm ci in viewer/ failed (registry unreachable, or @ohif/app's bytes" \
       "differ from the integrity in viewer/package-lock.json)" >&2
  exit 1
fi
[ -f "$dist" ] || { echo "[setup] no $dist after npm ci" >&2; exit 1; }
rm -f node_modules/.installed-*
touch "$marker"
echo "[setup] OHIF Viewer ready: viewer/$(dirname "$dist")"

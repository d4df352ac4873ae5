#!/usr/bin/env bash
# System tools the tests use to build their DICOM corpus from real converters:
# DCMTK (dcmcjpeg, dcmcjpls, dcmcrle, dcmconv) and GDCM (gdcmconv --j2k), OpenJPH (ojph_compress, HTJ2K); and Debian's
# Chromium for the browser tests (Playwright drives it; it never downloads a browser).
set -euo pipefail
missing=()
command -v dcmcjpeg >/dev/null 2>&1 || missing+=(dcmtk)
command -v gdcmconv >/dev/null 2>&1 || missing+=(libgdcm-tools)
command -v ojph_compress >/dev/null 2>&1 || missing+=(openjph-tools)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "[setup] missing ${missing[*]}; install them (apt-get install ${missing[*]}) or the" \
       "tests that need them are skipped" >&2
  exit 0
fi
echo "[setup] apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

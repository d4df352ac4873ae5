#!/usr/bin/env bash
# System tools the tests use to build their DICOM corpus from real converters:
# DCMTK (dcmcjpeg, dcmcjpls, dcmcrle, dcmconv), GDCM (gdcmconv --j2k) and OpenJPH
# (ojph_compress, HTJ2K); dicom3tools (dciodvfy: validates our SR and presentation state);
# Orthanc + its DICOMweb plugin (the real PACS the DICOM networking tests store into and
# read back; started as a plain process, never as the system service);
# Prometheus + promtool (checks and unit-tests deploy/prometheus/'s rules; one test
# runs a real Prometheus as a plain process scraping the stack);
# Debian's Chromium for the browser tests (Playwright drives
# it; it never downloads a browser); iproute2, iptables and dnsmasq-base (the test hosts:
# network namespaces on a bridge, links cut and throttled, a DNS server run as a plain
# process, never as the system service) and openssl (the DICOM TLS tests' certificates). Installs what is missing when run as root; exits 1
# when something is still missing, so `make test` cannot go green having checked little
# (pytest run directly skips those tests locally; under CI=1 they fail).
set -euo pipefail
missing() {
  local out=()
  command -v dcmcjpeg >/dev/null 2>&1 || out+=(dcmtk)
  command -v dciodvfy >/dev/null 2>&1 || out+=(dicom3tools)
  command -v gdcmconv >/dev/null 2>&1 || out+=(libgdcm-tools)
  command -v ojph_compress >/dev/null 2>&1 || out+=(openjph-tools)
  [ -x "${E2E_CHROMIUM:-/usr/bin/chromium}" ] || out+=(chromium)
  [ -x /usr/sbin/Orthanc ] || out+=(orthanc)
  [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || out+=(orthanc-dicomweb)
  { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || out+=(prometheus)
  command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || out+=(iproute2)
  command -v iptables >/dev/null 2>&1 || out+=(iptables)
  command -v dnsmasq >/dev/null 2>&1 || out+=(dnsmasq-base)
  command -v openssl >/dev/null 2>&1 || out+=(openssl)
  echo "${out[@]}"
}
# kubectl is not a (recent enough) Debian package: its own script fetches it.
"$(dirname "$0")/setup-kubectl.sh"
# Orthanc, Node.js and the OHIF Viewer (npm ci, pinned) for the reading-room browser test.
"$(dirname "$0")/setup-reading-room.sh"
# shellcheck source=scripts/debian-packages.sh
. "$(dirname "$0")/debian-packages.sh"
install_missing missing

#!/usr/bin/env bash
# Sourced by the setup scripts (not run): install_missing LISTER installs the Debian
# packages the function LISTER prints (space-separated, nothing when all are there).
# As root it runs apt-get; otherwise it names the command to run. Returns 1 when
# something is still missing afterwards, so a setup cannot go green having installed less.
install_missing() {
  local lister=$1 need still
  need=$("$lister")
  [ -z "$need" ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "[setup] missing Debian packages: $need; install them (as root:" \
         "apt-get install $need) and run again" >&2
    return 1
  fi
  echo "[setup] apt-get install $need"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086  # one word per package
  if ! { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $need >/dev/null; }; then
    echo "[setup] apt-get install $need failed" >&2
    return 1
  fi
  still=$("$lister")
  if [ -n "$still" ]; then
    echo "[setup] still missing after apt-get install: $still" >&2
    return 1
  fi
}

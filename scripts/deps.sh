#!/bin/sh
# Install what building, running and testing cqrsd needs, if it is missing.
# Debian packages only; uses sudo when not root. Safe to run repeatedly.
set -eu

pkgs="build-essential cmake pkg-config libsqlite3-dev libmicrohttpd-dev
      libjansson-dev libcmocka-dev python3 curl $*"

missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing

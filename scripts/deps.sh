#!/bin/sh
# Install what building, running and testing cqrsd needs, if it is missing.
# Debian packages only; uses sudo when not root. Safe to run repeatedly.
set -eu

pkgs="build-essential cmake pkg-config libsqlite3-dev libmicrohttpd-dev
      libjansson-dev libcmocka-dev libpq-dev libnats-dev python3 curl $*"

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
# Packages that ship a service (prometheus, for promtool) must not start it
# here: a policy-rc.d that says "no" keeps invoke-rc.d quiet during the
# install, and is removed again if we put it there.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    policy=1
fi
status=0
$sudo apt-get update -qq || status=$?
# shellcheck disable=SC2086
[ $status -eq 0 ] && { $sudo apt-get install -y -qq --no-install-recommends $missing || status=$?; }
[ -n "$policy" ] && $sudo rm -f /usr/sbin/policy-rc.d
exit $status

#!/usr/bin/env bash
# Build (once) and print the path of a 32-bit i386 Debian bookworm user land like the Edison's:
# Debian's python3 (3.11), mosquitto, openssl, and the agent's Python dependencies, Debian's
# where bookworm has a usable version, pip's in a venv where it does not (paho-mqtt: bookworm
# has 1.6, the agent needs 2.x; cryptography has no i686 wheels, so Debian's 38 is used).
# debootstrap does not resolve virtual packages: python3-cffi-backend is named for cryptography.
#
# The root is cached outside the checkout (CI runs in a fresh clone on the same machine), keyed
# by the suite and the package lists (ROOT_VERSION: bump it when the build steps change): a new
# list builds a new root. It is built beside the cache and renamed into place, so an interrupted
# build never leaves a half root behind.
#
# Usage: tests/i386/root.sh            prints the root's path on stdout (building it if needed)
# Exit 3 (with a reason on stderr) where this machine cannot build one: not root, no debootstrap.
set -euo pipefail

# python3-jinja2: tests/test_discovery.py renders the Home Assistant templates as Home Assistant does.
CACHE=${EDISON_I386_CACHE:-/var/cache/edison-agent}
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,python3-setuptools,python3-wheel,python3-cryptography,python3-cffi-backend,\
python3-yaml,python3-pytest,python3-hypothesis,python3-systemd,python3-jinja2,mosquitto,mosquitto-clients,openssl,\
ca-certificates,procps
PIP_PACKAGES="paho-mqtt==2.2.0"
ROOT_VERSION=1

cannot() { echo "i386 root: cannot build here: $*" >&2; exit 3; }
[ "$(id -u)" = 0 ] || cannot "needs root (debootstrap and chroot)"
command -v debootstrap >/dev/null || cannot "no debootstrap (apt-get install debootstrap)"

key=$(echo "$ROOT_VERSION $SUITE $PACKAGES $PIP_PACKAGES" | sha256sum | cut -c1-12)
root="$CACHE/rootfs-$SUITE-i386-$key"
if [ -e "$root/.complete" ]; then
  echo "$root"
  exit 0
fi

# The mirror this machine's apt already uses, read now: CI and developers' machines differ.
mirror=$(apt-cache policy | awk -v s="$SUITE/main" '$3 == s && $2 ~ /^https?:/ {print $2; exit}')
[ -n "$mirror" ] || cannot "no $SUITE/main mirror in this machine's apt sources (apt-cache policy)"

mkdir -p "$CACHE"
build=$(mktemp -d "$CACHE/.build-XXXXXX")
trap 'rm -rf --one-file-system "$build"' EXIT
echo "i386 root: debootstrap $SUITE from $mirror into $build (a few minutes, once)" >&2
start=$(date +%s)
debootstrap --arch=i386 --variant=minbase --include="$PACKAGES" "$SUITE" "$build" "$mirror" >&2 \
  || { tail -20 "$build/debootstrap/debootstrap.log" >&2 2>/dev/null; exit 1; }

# pip inside needs this machine's extra CA certificates (a TLS-inspecting proxy, say) and its DNS.
cp /usr/local/share/ca-certificates/*.crt "$build/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/resolv.conf "$build/etc/resolv.conf"
# A clean environment: this machine's pip settings (local indexes, wheel directories) mean nothing inside.
in_build() { chroot "$build" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
in_build update-ca-certificates >/dev/null
# --system-site-packages: Debian's cryptography, PyYAML, pytest, hypothesis and systemd bindings.
in_build python3 -m venv --system-site-packages /opt/venv
in_build /opt/venv/bin/python -m pip install -q --disable-pip-version-check \
  --cert /etc/ssl/certs/ca-certificates.crt $PIP_PACKAGES >&2
in_build /opt/venv/bin/python -c 'import struct, paho.mqtt, cryptography, yaml, pytest
assert struct.calcsize("P") == 4, "not a 32-bit user land"' >&2
echo "i386 root: built in $(( $(date +%s) - start )) s, $(du -sh --one-file-system "$build" | cut -f1)" >&2
touch "$build/.complete"
mv -T "$build" "$root"
trap - EXIT
# Older roots (another package list) are left for the operator: another checkout may still use them.
echo "$root"

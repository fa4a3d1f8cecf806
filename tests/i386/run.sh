#!/usr/bin/env bash
# `make test-i386`: the test suite in a 32-bit i386 Debian user land (tests/i386/root.sh), so
# defects only a 32-bit board shows (a 32-bit time_t, struct sizes in ctypes, integer widths)
# fail in CI. Arguments go to pytest (default: the whole suite).
#
# Each run gets its own overlay on the cached root and its own copy of the checkout: the cache
# stays as built, two runs do not meet, and nothing is written into the checkout. The chroot
# shares the host's network namespace (mosquitto listens on 127.0.0.1 inside it).
# Where this machine cannot do it (not root, no debootstrap, no overlayfs), it says SKIP and exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."

skip() { echo "SKIP make test-i386: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, chroot, mounts)"
set +e
root=$(tests/i386/root.sh)
status=$?
set -e
[ $status = 3 ] && skip "see the line above"
[ $status = 0 ] || exit $status
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || skip "no overlayfs in this kernel"

run=$(mktemp -d /var/tmp/edison-i386-run-XXXXXX)
trap 'rm -rf --one-file-system "$run"' EXIT
mkdir -p "$run/upper" "$run/work" "$run/merged"
# The checkout as committed and as edited, without the host's venv and caches.
tar -c --exclude=./.git --exclude=./.venv --exclude='*/__pycache__' --exclude=./bench/.peers-venv \
  --exclude=./.pytest_cache --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./build \
  --exclude='*.egg-info' -f "$run/src.tar" .

# A private mount namespace: every mount below disappears with it, even if this script is killed.
unshare --mount --propagation private bash -euo pipefail -s "$root" "$run" "$@" <<'INNER'
root=$1 run=$2
shift 2
m=$run/merged
mount -t overlay overlay -o "lowerdir=$root,upperdir=$run/upper,workdir=$run/work" "$m"
mount --rbind /dev "$m/dev"
mount -t proc proc "$m/proc"
mount --rbind /sys "$m/sys"
mount -t tmpfs -o mode=1777 tmpfs "$m/tmp"
# localhost and this machine's name resolve as on the host (debootstrap writes no /etc/hosts).
cp /etc/resolv.conf /etc/hosts "$m/etc/"
mkdir -p "$m/src"
tar -x -f "$run/src.tar" -C "$m/src"
# setarch: uname says i686, as on the board, not the host kernel's x86_64.
in_root() { setarch i686 chroot "$m" env -i PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  PYTHONDONTWRITEBYTECODE=1 "$@"; }
# The package as a user installs it, without the network: its dependencies are in the root already.
in_root /opt/venv/bin/python -m pip install -q --no-deps --no-build-isolation --no-index \
  --disable-pip-version-check /src
in_root /opt/venv/bin/python - <<'PY'
import platform, struct, sys, ssl
bits = struct.calcsize("P") * 8
print("test-i386: %s, %d-bit pointers, %s, Python %s, %s" % (
    platform.machine(), bits, platform.libc_ver()[0] + " " + platform.libc_ver()[1],
    platform.python_version(), ssl.OPENSSL_VERSION))
sys.exit(0 if bits == 32 else "test-i386: this is not a 32-bit user land")
PY
cd "$m/src"
in_root env PYTHONPATH=/src/tests/i386 sh -c 'cd /src && exec python -m pytest -q -p no:cacheprovider -p i386_skips "$@"' pytest "$@"
INNER

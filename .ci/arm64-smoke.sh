#!/usr/bin/env bash
# The Raspberry Pi path: README quick-start line 1, verbatim, inside an emulated 64-bit Debian 12 (bookworm,
# what 64-bit Raspberry Pi OS Bookworm is built on), as an ordinary user, then screen a DICOM there.
#
# The root file system is built with debootstrap and run with qemu-user-static through binfmt_misc (both
# Debian packages). It holds what a fresh Raspberry Pi OS Lite has that matters here: python3 (3.11, marked
# EXTERNALLY-MANAGED, PEP 668), python3-venv (in Lite since 2023-12-05), python3-pip, ca-certificates, sudo.
# Then docs/watch.md's install steps 1 and 2 (service user, folders, venv in /opt), as written, as root.
# Measured here: 20-23 min wall on 2 cores shared with a full test run (load average 10-12); the issue's
# author measured about 12 min on a quieter machine. Nothing is cached across runs.
#
# Exit 0: passed, or skipped with a line saying why (not root, no binfmt_misc, packages not installable, no
# network to the Debian mirror). Exit 1: README line 1, the DICOM screening or docs/watch.md's install steps
# failed inside the arm64 system.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh
mirror=${ARM64_SMOKE_MIRROR:-http://deb.debian.org/debian}

skip() { echo "SKIP arm64 smoke test: $*"; exit 0; }
fail() { echo "FAIL arm64 smoke test: $*"; exit 1; }

[ "$(id -u)" = 0 ] || skip "needs root for debootstrap and chroot"
[ "$(uname -m)" = x86_64 ] || [ "$(uname -m)" = aarch64 ] || skip "host $(uname -m) is not x86_64 or aarch64"

if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null \
        || ! command -v update-binfmts >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        debootstrap qemu-user-static binfmt-support >/dev/null) \
        || skip "debootstrap / qemu-user-static could not be installed"
fi
if [ "$(uname -m)" != aarch64 ]; then
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
            || skip "binfmt_misc is not available in this kernel or container, arm64 binaries cannot run"
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    # without binfmt-support's tool: qemu-user-static's own systemd-binfmt line, written to the kernel directly
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || [ ! -f /usr/lib/binfmt.d/qemu-aarch64.conf ] \
        || cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register 2>/dev/null || true
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || skip "no binfmt_misc handler for arm64 (qemu-aarch64)"
fi

work=$(mktemp -d /var/tmp/cxr-arm64.XXXXXX)
root=$work/root
cleanup() {
    for m in "$root/dev/pts" "$root/dev" "$root/proc"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

echo "-- debootstrap arm64 bookworm (first stage) from $mirror"
packages=python3,python3-venv,python3-pip,ca-certificates,sudo
if ! debootstrap --arch=arm64 --variant=minbase --foreign --include="$packages" bookworm "$root" "$mirror" \
        >"$work/debootstrap.log" 2>&1; then
    tail -5 "$work/debootstrap.log"
    skip "debootstrap could not fetch Debian 12 arm64 packages from $mirror"
fi
cp "$(command -v qemu-aarch64-static)" "$root/usr/bin/" 2>/dev/null || true   # for handlers without the F flag
chroot "$root" /bin/true 2>/dev/null || skip "arm64 binaries do not run here (binfmt/qemu not usable)"

echo "-- debootstrap second stage (emulated arm64)"
chroot "$root" /debootstrap/debootstrap --second-stage >"$work/stage2.log" 2>&1 \
    || { tail -20 "$work/stage2.log"; fail "debootstrap second stage failed"; }
[ "$(chroot "$root" dpkg --print-architecture)" = arm64 ] || fail "the root file system is not arm64"
chroot "$root" test -e /usr/lib/python3.11/EXTERNALLY-MANAGED \
    || fail "Debian's python3 is not marked EXTERNALLY-MANAGED; this would not test PEP 668"

cp /etc/resolv.conf "$root/etc/resolv.conf"
echo "127.0.1.1 $(hostname)" >>"$root/etc/hosts"  # sudo resolves the host name
# This machine's TLS trust (Debian's CAs plus any local one, e.g. an intercepting proxy's), so pip in the
# chroot reaches PyPI exactly as it does on the host.
[ -s /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
chroot "$root" useradd --create-home --uid 4242 --shell /bin/bash pi

# a clean copy of the checkout, as `git clone` would give (tracked and new files, not ignored ones)
copy_checkout "$root/home/pi/cxr-edge"
chroot "$root" chown -R pi:pi /home/pi/cxr-edge

line1=$(readme_line 1)
[ -n "$line1" ] || fail "could not find README quick-start line 1"

as_pi() {
    chroot --userspec=4242:4242 "$root" /usr/bin/env -i HOME=/home/pi USER=pi LANG=C.UTF-8 \
        PATH=/usr/local/bin:/usr/bin:/bin /bin/bash -c "cd /home/pi/cxr-edge && $1"
}

echo "-- arm64 Debian 12, as user pi: $line1"
as_pi "$line1" || fail "README quick-start line 1 failed on arm64 Debian 12"

echo "-- arm64: the edge-only install has no TensorFlow"
as_pi '! .venv/bin/python -c "import tensorflow" 2>/dev/null' || fail "the edge-only install pulled TensorFlow"

echo "-- arm64: screen a DICOM (CR, 12 bit, written with pydicom from a bundled sample)"
as_pi '.venv/bin/python -c "
import sys; from pathlib import Path; sys.path.insert(0, \"tests\")
from images import PNEUMONIA_SAMPLE, grey_sample, to_bits, write_dicom
write_dicom(Path(\"/tmp/sample.dcm\"), to_bits(grey_sample(PNEUMONIA_SAMPLE), 12))
"' || fail "could not write the test DICOM"
out=$(as_pi '.venv/bin/cxr-edge screen /tmp/sample.dcm --json --no-log') || { echo "$out"; fail "screening a DICOM failed"; }
echo "$out"
echo "$out" | grep -q '"status": "screened"' || fail "the DICOM was not screened"
echo "-- arm64: a mixed-age station (--by-age): a 6-year-old's DICOM goes to cxr-pediatric"
as_pi '.venv/bin/python -c "
import sys; from pathlib import Path; sys.path.insert(0, \"tests\")
from images import PNEUMONIA_SAMPLE, grey_sample, to_bits, write_dicom
write_dicom(Path(\"/tmp/child.dcm\"), to_bits(grey_sample(PNEUMONIA_SAMPLE), 12), tags={\"PatientAge\": \"006Y\"})
"' || fail "could not write the child's DICOM"
out=$(as_pi '.venv/bin/cxr-edge screen /tmp/child.dcm /tmp/sample.dcm --by-age --json --no-log') \
    || { echo "$out"; fail "screening --by-age failed"; }
echo "$out"
echo "$out" | head -1 | grep -q '"name": "cxr-pediatric"' || fail "the child's DICOM did not go to cxr-pediatric"
echo "-- arm64: docs/watch.md install steps 1 and 2, as written, as root in the clone"
steps=$(awk '/^## Running as a service/{q=1} q&&/^# 1\./{p=1} q&&/^# 3\./{exit} p' docs/watch.md)
[ -n "$steps" ] || fail "could not find docs/watch.md's install steps"
echo "$steps"
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -euo pipefail -c "cd /home/pi/cxr-edge && $steps" || fail "docs/watch.md install steps failed"
out=$(chroot "$root" /opt/cxr-edge/venv/bin/cxr-edge --version) && [ "$out" = "cxr-edge 0.1.0" ] \
    || fail "the service's venv has no working cxr-edge ($out)"
echo "arm64 smoke test passed: README line 1, a DICOM and docs/watch.md's install on emulated arm64 Debian 12"

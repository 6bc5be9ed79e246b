#!/usr/bin/env bash
# Fetch the real test inputs: a Debian linux-image-6.1.0-*-amd64 package, unpacked under .cache/kernel/.
# Idempotent and quiet when already there. The package is Debian's signed kernel; its modules are
# really signed (sha256 + RSA-4096) and its vmlinuz carries the certificate that signed them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache/kernel"
want=${EXECGATE_KERNEL_PACKAGE:-linux-image-6.1.0-56-amd64}
mkdir -p "$cache"
if [ -d "$cache/current/boot" ] && [ -f "$cache/current/.complete" ]; then exit 0; fi
cd "$cache"
if ! ls "$want"_*.deb >/dev/null 2>&1; then
  echo "fetch-test-data: downloading $want (apt-get download)"
  if ! apt-get download "$want" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    if ! apt-get download "$want" >/dev/null 2>&1; then
      # The pinned ABI may have left the archive: take the newest 6.1 amd64 image instead.
      want=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
      [ -n "$want" ] || { echo "fetch-test-data: no linux-image-6.1.0-*-amd64 in apt" >&2; exit 1; }
      echo "fetch-test-data: falling back to $want"
      apt-get download "$want" >/dev/null
    fi
  fi
fi
deb=$(ls "$want"_*.deb | head -1)
rm -rf "$cache/unpack.tmp" && mkdir -p "$cache/unpack.tmp"
echo "fetch-test-data: unpacking $deb"
dpkg-deb -x "$deb" "$cache/unpack.tmp"
touch "$cache/unpack.tmp/.complete"
rm -rf "$cache/$want" && mv "$cache/unpack.tmp" "$cache/$want"
ln -sfn "$want" "$cache/current"

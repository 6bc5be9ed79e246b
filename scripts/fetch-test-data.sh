#!/usr/bin/env bash
# Fetch the real test inputs, idempotently and quietly when already there:
#   - a Debian linux-image-6.1.0-*-amd64 package, unpacked under .cache/kernel/ (`current` links it);
#   - Debian's linux-image-6.12.117+deb12-amd64 (the 6.12 loader's tests: .ko.xz modules, the 6.12
#     vmlinuz), unpacked under .cache/kernel-6.12/;
#   - opt-in (`--flavours`, for scripts/matrix.sh, never for make test): Debian's 6.1 and 6.12 cloud
#     and rt flavours (linux-image-6.1.0-56-cloud-amd64, -rt-amd64, linux-image-6.12.117+deb12-cloud-amd64,
#     -rt-amd64), unpacked under .cache/kernel-flavours/;
#   - opt-in (`--point-releases`, for scripts/matrix.sh): older Debian point releases of both rows
#     (linux-image-6.1.0-47-amd64, linux-image-6.12.100+deb12-amd64), also under .cache/kernel-flavours/;
#   - opt-in (`--newest`, for scripts/matrix.sh): the newest 6.12 point release in the archive on
#     2026-12-04, all three flavours (linux-image-6.12.118+deb12-{,cloud-,rt-}amd64), and the 6.1.0-57
#     cloud and rt flavours, also under .cache/kernel-flavours/ (rows 612p118*, 61p57cloud, 61p57rt).
# The packages are Debian's signed kernels: their modules are really signed (sha256 + RSA-4096) and
# each vmlinuz carries the certificate that signed them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# download PACKAGE into the current directory (apt-get download; one apt-get update if needed).
download() {
  local pkg=$1
  ls "$pkg"_*.deb >/dev/null 2>&1 && return 0
  echo "fetch-test-data: downloading $pkg (apt-get download)"
  apt-get download "$pkg" >/dev/null 2>&1 && return 0
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get download "$pkg" >/dev/null 2>&1
}

# unpack PACKAGE DIR: dpkg-deb -x into DIR/PACKAGE, atomically (a .complete marker, then rename).
unpack() {
  local pkg=$1 dir=$2 deb
  deb=$(ls "$dir/$pkg"_*.deb | head -1)
  rm -rf "$dir/unpack.tmp" && mkdir -p "$dir/unpack.tmp"
  echo "fetch-test-data: unpacking $(basename "$deb")"
  dpkg-deb -x "$deb" "$dir/unpack.tmp"
  touch "$dir/unpack.tmp/.complete"
  rm -rf "${dir:?}/$pkg" && mv "$dir/unpack.tmp" "$dir/$pkg"
}

# 6.1 (the protected guests' kernel of the main tests).
cache="$root/.cache/kernel"
mkdir -p "$cache"
if ! { [ -d "$cache/current/boot" ] && [ -f "$cache/current/.complete" ]; }; then
  want=${EXECGATE_KERNEL_PACKAGE:-linux-image-6.1.0-56-amd64}
  cd "$cache"
  if ! download "$want"; then
    # The pinned ABI may have left the archive: take the newest 6.1 amd64 image instead.
    want=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
    [ -n "$want" ] || { echo "fetch-test-data: no linux-image-6.1.0-*-amd64 in apt" >&2; exit 1; }
    echo "fetch-test-data: falling back to $want"
    download "$want"
  fi
  unpack "$want" "$cache"
  ln -sfn "$want" "$cache/current"
fi

# 6.12 (Debian 13's kernel, in bookworm as 6.12.*+deb12): the 6.12 loader replay's real inputs.
cache612="$root/.cache/kernel-6.12"
want612=linux-image-6.12.117+deb12-amd64
mkdir -p "$cache612"
if ! [ -f "$cache612/$want612/.complete" ]; then
  cd "$cache612"
  download "$want612" || { echo "fetch-test-data: $want612 is not in apt (the 6.12 tests need it)" >&2; exit 1; }
  unpack "$want612" "$cache612"
fi

# Opt-in: the cloud and PREEMPT_RT flavours of the same ABIs (the matrix's other rows), or older
# point releases of the generic flavour.
extra=""
case "${1:-}" in
  --flavours) extra="linux-image-6.1.0-56-cloud-amd64 linux-image-6.1.0-56-rt-amd64
    linux-image-6.12.117+deb12-cloud-amd64 linux-image-6.12.117+deb12-rt-amd64" ;;
  --point-releases) extra="linux-image-6.1.0-47-amd64 linux-image-6.12.100+deb12-amd64" ;;
  --newest) extra="linux-image-6.12.118+deb12-amd64 linux-image-6.12.118+deb12-cloud-amd64
    linux-image-6.12.118+deb12-rt-amd64 linux-image-6.1.0-57-cloud-amd64 linux-image-6.1.0-57-rt-amd64" ;;
esac
if [ -n "$extra" ]; then
  cacheflv="$root/.cache/kernel-flavours"
  mkdir -p "$cacheflv"
  for want in $extra; do
    [ -f "$cacheflv/$want/.complete" ] && continue
    cd "$cacheflv"
    download "$want" || { echo "fetch-test-data: $want is not in apt" >&2; exit 1; }
    unpack "$want" "$cacheflv"
  done
fi

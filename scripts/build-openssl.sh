#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds the minimal libcrypto that the service VM's static /init links, from Debian's own OpenSSL
# source package of the installed libssl-dev version (upstream tarball + Debian's patches), with the
# Configure options in Images/openssl/execgate.options; once per input hash:
#
#   key = sha256(recipe version, the options file, the Debian version and its .dsc sha256,
#                `gcc --version`, `ar --version`, perl's version)
#   out = .cache/guest-openssl/<key>/{lib/libcrypto.a, include/openssl/*.h, build.txt}
#
# Only libcrypto.a is built (no libssl, no apps, no tests), compiled -Os with function and data
# sections so the static link's --gc-sections keeps only what /init reaches, and without unwind tables
# for its C code (reason below).
# Source: openssl_<version>.dsc and its files from deb.debian.org's pool (security, then main),
# kept in .cache/guest-openssl/src/; the .dsc must match a line of Images/openssl/sources.sha256,
# and every file the .dsc names must match the sha256 it gives, before anything is extracted.
# Reproducible: in-tree build (relative __FILE__), no debug info, SOURCE_DATE_EPOCH from Debian's
# changelog (OpenSSL's "built on"), fixed prefix, deterministic ar (Debian's default).
# Installs nothing (scripts/install-deps.sh does). Prints the output directory as the last line on stdout.
#
#   scripts/build-openssl.sh                 build if needed, print the cached directory
#   scripts/build-openssl.sh --key           print the cache key only (no build, no download)
#   scripts/build-openssl.sh --out DIR       build into DIR instead of the cache (reproducibility checks)
# Options: --options FILE (default Images/openssl/execgate.options), --version V (default: the
# installed libssl-dev's), --jobs N. The build runs under `nice -n 10`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Bump when a change below alters what gets built (targets, flags, steps); the key does not hash
# this script, so fixing messages does not throw away a build.
recipe="execgate-guest-openssl-3"
options_file=Images/openssl/execgate.options
pins=Images/openssl/sources.sha256
jobs=$(nproc 2>/dev/null || echo 2)
mode=build
out_dir=""
version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --key) mode=key ;;
    --out) out_dir=$2; shift ;;
    --options) options_file=$2; shift ;;
    --version) version=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    -h|--help) sed -n '3,26p' "$0"; exit 0 ;;
    *) echo "build-openssl: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "build-openssl: $*" >&2; exit 1; }
case "$options_file" in /*) ;; *) options_file=$root/$options_file ;; esac
[ -f "$options_file" ] || die "options file $options_file not found"
[ -f "$pins" ] || die "$pins not found"
for t in gcc ar perl sha256sum; do command -v "$t" >/dev/null || die "$t not found: run scripts/install-deps.sh"; done

if [ -z "$version" ]; then
  version=$(dpkg-query -W -f='${Version}' libssl-dev 2>/dev/null) \
    || die "libssl-dev is not installed (run scripts/install-deps.sh): its version picks the source"
fi
upstream=${version%%-*}
dsc=openssl_${version}.dsc
dsc_sha=$(awk -v f="$dsc" '$2 == f {print $1}' "$pins")
[ -n "$dsc_sha" ] || die "no checksum for $dsc in $pins: verify that .dsc (e.g. against bookworm-security's signed Sources index: apt-get source --print-uris openssl=$version with a deb-src line) and add its sha256 there"

# The options: one per line, comments stripped; order kept (Configure is order-sensitive for enable/no pairs).
options=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^[[:space:]]*$/d' -e 's/^[[:space:]]*//' "$options_file")
bad_opt=$(echo "$options" | grep -vE '^(no|enable)-[a-z0-9_.-]+$' || true)
[ -z "$bad_opt" ] || die "not a no-/enable- option in $options_file: $(echo $bad_opt)"

# ---- the cache key ---------------------------------------------------------------------------
key=$( {
  echo "recipe=$recipe"
  echo "options=$(echo "$options" | sha256sum | cut -d' ' -f1)"
  echo "version=$version"
  echo "dsc=$dsc_sha"
  echo "gcc=$(gcc --version | head -1)"
  echo "ar=$(ar --version | head -1)"
  echo "perl=$(perl -e 'print $^V')"
} | sha256sum | cut -c1-32)
if [ "$mode" = key ]; then echo "$key"; exit 0; fi
for t in make curl dpkg-source dpkg-parsechangelog tar nice; do command -v "$t" >/dev/null || die "$t not found: run scripts/install-deps.sh"; done

cache_dir=$root/.cache/guest-openssl/$key
dest=${out_dir:-$cache_dir}
case "$dest" in /*) ;; *) dest=$root/$dest ;; esac
if [ -z "$out_dir" ] && [ -s "$cache_dir/lib/libcrypto.a" ] && [ -f "$cache_dir/build.txt" ]; then
  echo "build-openssl: cached ($key)" >&2
  echo "$cache_dir"
  exit 0
fi
t0=$(date +%s)

# ---- source: download (once) and verify ----------------------------------------------------------
src_cache=$root/.cache/guest-openssl/src/$version
mkdir -p "$src_cache"
fetch() { # fetch FILE: from the security pool, else the main pool, into $src_cache
  local f=$1 base
  [ -s "$src_cache/$f" ] && return 0
  for base in http://deb.debian.org/debian-security/pool/updates/main/o/openssl \
              http://deb.debian.org/debian/pool/main/o/openssl; do
    if curl -fsS --retry 2 -m 300 -o "$src_cache/$f.part" "$base/$f" 2>/dev/null; then
      mv "$src_cache/$f.part" "$src_cache/$f"; return 0
    fi
  done
  rm -f "$src_cache/$f.part"
  die "cannot download $f from deb.debian.org (security or main pool): needs the network once per version"
}
echo "build-openssl: source openssl $version (Debian)" >&2
fetch "$dsc"
got=$(sha256sum "$src_cache/$dsc" | cut -d' ' -f1)
[ "$got" = "$dsc_sha" ] || { rm -f "$src_cache/$dsc"; die "$dsc has sha256 $got, $pins says $dsc_sha (download removed)"; }
# Every file the .dsc lists, checked against its Checksums-Sha256 before extraction.
files=$(awk '/^Checksums-Sha256:/ {on=1; next} on && /^ / {print $1, $3; next} {on=0}' "$src_cache/$dsc")
[ -n "$files" ] || die "$dsc lists no Checksums-Sha256"
while read -r sha f; do
  fetch "$f"
  got=$(sha256sum "$src_cache/$f" | cut -d' ' -f1)
  [ "$got" = "$sha" ] || { rm -f "$src_cache/$f"; die "$f has sha256 $got, $dsc says $sha (download removed)"; }
done <<<"$files"
echo "build-openssl: verified $dsc and $(echo "$files" | wc -l) files" >&2

# ---- extract, configure -------------------------------------------------------------------------
mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "$(dirname "$dest")/.build-$key.XXXXXX")
trap 'rm -rf "$work"' EXIT
# dpkg-source unpacks the upstream tarball and applies Debian's patch series (and checks the
# checksums once more); without a keyring it cannot check the uploader's signature (our pin stands in).
dpkg-source -x "$src_cache/$dsc" "$work/openssl" >"$work/extract.log" 2>&1 \
  || { cat "$work/extract.log" >&2; die "dpkg-source -x $dsc failed"; }
src=$work/openssl
[ -x "$src/Configure" ] || die "no OpenSSL tree in $dsc"
echo "build-openssl: extracted, $(grep -c 'applying' "$work/extract.log" || echo 0) Debian patches applied" >&2
SOURCE_DATE_EPOCH=$(cd "$src" && dpkg-parsechangelog -STimestamp)
export SOURCE_DATE_EPOCH

# debian-amd64: Debian's own target (linux-x86_64 + -Wa,--noexecstack -fzero-call-used-regs=used-gpr
# -DOPENSSL_TLS_SECURITY_LEVEL=2, debian/patches/debian-targets.patch). CFLAGS replaces its -O3.
# The prefix names no real directory: with no-autoload-config nothing is ever read from it (and it is
# the marker GuestOpenSSLLinkBootTests finds in /init).
# No unwind tables for the C code (-fno-asynchronous-unwind-tables -fno-unwind-tables; the perlasm
# files keep their CFI): in /init nothing unwinds through a libcrypto frame. Unwinding there is
# pthread_exit/cancellation (forced unwind of the calling thread's stack) and C++ exceptions; libcrypto
# calls neither, and ExecGate registers no callback it could call (no BIO callback, no pass-phrase
# callback, no ex_data), so no such unwind can start below a libcrypto frame. A crash-time backtrace
# would stop at the first libcrypto frame. Saves its .eh_frame in /init (see ServiceVM/README.md).
# -UECP_NISTZ256_ASM (after build.info's -D on every compile line, so it wins): P-256 through OpenSSL's
# generic Montgomery method (ec_curve.c's fallback on every platform without that assembler) instead
# of the x86_64 ecp_nistz256 code, whose object holds a 150 KB precomputed table of points that zstd
# cannot compress. Same curve, same results; slower P-256 (a rare module-signature key; secret scalars
# still go through the constant-time ladder, ec_scalar_mul_ladder).
cflags="-Os -ffunction-sections -fdata-sections -fno-asynchronous-unwind-tables -fno-unwind-tables -UECP_NISTZ256_ASM"
# shellcheck disable=SC2086
( cd "$src" && ./Configure debian-amd64 $options --prefix=/nonexistent/execgate-openssl \
    --openssldir=/nonexistent/execgate-openssl "CFLAGS=$cflags" ) \
  >"$work/configure.log" 2>&1 || { tail -30 "$work/configure.log" >&2; die "Configure failed (log above)"; }
echo "build-openssl: configured ($(echo "$options" | wc -l) options)" >&2

# ---- the long step: libcrypto.a only ----------------------------------------------------------
total=$(grep -cE '^crypto/.*libcrypto-lib-[^ ]*\.o: ' "$src/Makefile" || echo "?")
echo "build-openssl: building libcrypto.a with $jobs jobs ($total objects; 1-3 minutes on 2 cores)" >&2
( cd "$src" && nice -n 10 make -s -j"$jobs" build_generated && nice -n 10 make -s -j"$jobs" libcrypto.a ) \
  >"$work/build.log" 2>&1 &
mk=$!
while kill -0 "$mk" 2>/dev/null; do
  sleep 15
  kill -0 "$mk" 2>/dev/null || break
  echo "build-openssl: ... $(find "$src" -name 'libcrypto-lib-*.o' | wc -l)/$total objects, $(( $(date +%s) - t0 )) s" >&2
done
wait "$mk" || { tail -30 "$work/build.log" >&2; die "make libcrypto.a failed (log above)"; }

# ---- results ---------------------------------------------------------------------------------
staging=$dest.tmp.$$
rm -rf "$staging"; mkdir -p "$staging/lib" "$staging/include/openssl"
cp "$src/libcrypto.a" "$staging/lib/libcrypto.a"
# The headers of this configuration (generated ones included): the shim compiles against them, so
# a function these options removed fails the static build at compile time, not at run time.
cp "$src"/include/openssl/*.h "$staging/include/openssl/"
{
  echo "key=$key"; echo "recipe=$recipe"; echo "version=$version"; echo "dsc_sha256=$dsc_sha"
  echo "options=$(echo $options)"
  echo "cflags=$cflags"; echo "gcc=$(gcc --version | head -1)"
  echo "source_date_epoch=$SOURCE_DATE_EPOCH"
  echo "libcrypto_sha256=$(sha256sum "$staging/lib/libcrypto.a" | cut -d' ' -f1)"
  echo "libcrypto_bytes=$(stat -c %s "$staging/lib/libcrypto.a")"
  echo "seconds=$(( $(date +%s) - t0 ))"
} >"$staging/build.txt"
rm -rf "$dest"; mv "$staging" "$dest"
echo "build-openssl: libcrypto.a $(stat -c %s "$dest/lib/libcrypto.a") bytes; $(( $(date +%s) - t0 )) s" >&2
echo "$dest"

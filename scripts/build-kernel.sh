#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds the service VM's own guest kernel from Debian's linux-source-6.1 and the config fragment
# Images/kernel/execgate.config, once per input hash: `vmlinux` (the PVH ELF QEMU boots directly) and
# `bzImage` (the same kernel behind the x86 decompressor, which is where KASLR picks the base):
#
#   key = sha256(recipe version, the fragment, the source tarball's sha256 and Debian package
#                version, `gcc --version`, `ld --version`)
#   out = .cache/guest-kernel/<key>/{vmlinux, bzImage, config, size.txt, build.txt}
#
# Reproducible: fixed KBUILD_BUILD_TIMESTAMP/USER/HOST/VERSION, no git, no debug info, relative paths
# (the kernel's -fmacro-prefix-map), so two builds from the same inputs are byte-identical.
# Installs nothing (scripts/install-deps.sh does). Prints the vmlinux path as the last line on stdout.
#
#   scripts/build-kernel.sh                 build if needed, print the cached vmlinux path
#   scripts/build-kernel.sh --key           print the cache key only (no build)
#   scripts/build-kernel.sh --out DIR       build into DIR instead of the cache (reproducibility checks)
# Options: --source TARBALL (default /usr/src/linux-source-6.1.tar.xz), --config FRAGMENT, --jobs N.
# The build itself runs under `nice -n 10` (it takes a few minutes of both cores here).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Bump this whenever a change below alters what gets built (make targets, KBUILD_* settings, the
# config step): the cache key does not hash this script, so that fixing its messages or option
# handling does not throw away a half-hour kernel build.
recipe="execgate-guest-kernel-2"
source_tar=/usr/src/linux-source-6.1.tar.xz
fragment=Images/kernel/execgate.config
jobs=$(nproc 2>/dev/null || echo 2)
mode=build
out_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --key) mode=key ;;
    --out) out_dir=$2; shift ;;
    --source) source_tar=$2; shift ;;
    --config) fragment=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    -h|--help) sed -n '3,20p' "$0"; exit 0 ;;
    *) echo "build-kernel: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "build-kernel: $*" >&2; exit 1; }
case "$fragment" in /*) ;; *) fragment=$root/$fragment ;; esac
[ -f "$fragment" ] || die "config fragment $fragment not found"
[ -f "$source_tar" ] || die "kernel source $source_tar not found: apt-get install linux-source-6.1 (make deps)"
for t in gcc ld sha256sum; do command -v "$t" >/dev/null || die "$t not found: run scripts/install-deps.sh"; done

# ---- the cache key ---------------------------------------------------------------------------
pkg_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || echo unknown)
src_sha=$(sha256sum "$source_tar" | cut -d' ' -f1)
key=$( {
  echo "recipe=$recipe"
  echo "fragment=$(sha256sum "$fragment" | cut -d' ' -f1)"
  echo "source=$src_sha"
  echo "source_package=$pkg_version"
  echo "gcc=$(gcc --version | head -1)"
  echo "ld=$(ld --version | head -1)"
} | sha256sum | cut -c1-32)
if [ "$mode" = key ]; then echo "$key"; exit 0; fi
for t in make flex bison bc tar xz size nice; do command -v "$t" >/dev/null || die "$t not found: run scripts/install-deps.sh"; done

cache_dir=$root/.cache/guest-kernel/$key
dest=${out_dir:-$cache_dir}
case "$dest" in /*) ;; *) dest=$root/$dest ;; esac
if [ -z "$out_dir" ] && [ -s "$cache_dir/vmlinux" ] && [ -f "$cache_dir/build.txt" ]; then
  echo "build-kernel: cached ($key)" >&2
  echo "$cache_dir/vmlinux"
  exit 0
fi

# ---- source and config -----------------------------------------------------------------------
mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "$(dirname "$dest")/.build-$key.XXXXXX")
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
echo "build-kernel: extracting $(basename "$source_tar") ($pkg_version)" >&2
tar -xJf "$source_tar" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -1)
[ -f "$src/Makefile" ] || die "no kernel tree in $source_tar"

# Every symbol in the fragment must exist in this tree (a typo would otherwise "pass" as unset).
known=$(grep -rhoE '^[[:space:]]*(menu)?config[[:space:]]+[A-Za-z0-9_]+' --include='Kconfig*' "$src" | awk '{print $2}' | sort -u)
requested=$(grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set)' "$fragment")
unknown=$(echo "$requested" | sed -E 's/^# //; s/^CONFIG_([A-Za-z0-9_]+).*/\1/' | sort -u | comm -23 - <(echo "$known"))
[ -z "$unknown" ] || die "the fragment names symbols this kernel does not have: $(echo $unknown)"

kmake=(make -C "$src" ARCH=x86_64 -s
       KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970" KBUILD_BUILD_USER=execgate
       KBUILD_BUILD_HOST=execgate KBUILD_BUILD_VERSION=1)
# allnoconfig with the fragment forced: everything the fragment does not name stays off.
"${kmake[@]}" KCONFIG_ALLCONFIG="$fragment" allnoconfig >/dev/null 2>"$work/kconfig.log" \
  || { cat "$work/kconfig.log" >&2; die "make allnoconfig failed"; }

# Verify: every line of the fragment is in the resolved .config exactly as requested.
bad=0
while IFS= read -r line; do
  if [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
    sym=${BASH_REMATCH[1]}
    if grep -qE "^$sym=" "$src/.config"; then echo "build-kernel: $sym requested off, got $(grep -E "^$sym=" "$src/.config")" >&2; bad=1; fi
  else
    grep -qxF -- "$line" "$src/.config" || { echo "build-kernel: requested $line, got $(grep -E "^(# )?${line%%=*}[= ]" "$src/.config" || echo "${line%%=*} absent (a dependency is missing)")" >&2; bad=1; }
  fi
done <<<"$requested"
[ "$bad" -eq 0 ] || die "the resolved config differs from $fragment (see above)"
echo "build-kernel: config verified ($(echo "$requested" | wc -l) options as requested)" >&2

# ---- the long step: vmlinux and bzImage --------------------------------------------------------
echo "build-kernel: building vmlinux and bzImage with $jobs jobs (a few minutes on 2 idle cores)" >&2
( nice -n 10 "${kmake[@]}" -j"$jobs" vmlinux bzImage >"$work/build.log" 2>&1 ) &
mk=$!
while kill -0 "$mk" 2>/dev/null; do
  sleep 15
  kill -0 "$mk" 2>/dev/null || break
  echo "build-kernel: ... $(find "$src" -name '*.o' | wc -l) objects, $(( $(date +%s) - t0 )) s" >&2
done
wait "$mk" || { tail -30 "$work/build.log" >&2; die "make vmlinux bzImage failed (log above)"; }

# ---- results ---------------------------------------------------------------------------------
staging=$dest.tmp.$$
rm -rf "$staging"; mkdir -p "$staging"
cp "$src/vmlinux" "$staging/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$staging/bzImage"
cp "$src/.config" "$staging/config"
size "$staging/vmlinux" | awk 'NR==2 {printf "text=%d data=%d bss=%d text+data=%d\n", $1, $2, $3, $1+$2}' >"$staging/size.txt"
{
  echo "key=$key"; echo "recipe=$recipe"; echo "source=$source_tar"; echo "source_sha256=$src_sha"
  echo "source_package=$pkg_version"; echo "fragment=$fragment"; echo "gcc=$(gcc --version | head -1)"
  echo "release=$("${kmake[@]}" kernelrelease)"
  echo "vmlinux_sha256=$(sha256sum "$staging/vmlinux" | cut -d' ' -f1)"
  echo "bzImage_sha256=$(sha256sum "$staging/bzImage" | cut -d' ' -f1)"
  echo "seconds=$(( $(date +%s) - t0 ))"
} >"$staging/build.txt"
rm -rf "$dest"; mv "$staging" "$dest"
echo "build-kernel: $(cat "$dest/size.txt"); $(( $(date +%s) - t0 )) s" >&2
echo "$dest/vmlinux"

#!/usr/bin/env bash
# Install what ExecGate needs on a Debian/Ubuntu host. Idempotent; silent when all is present.
set -euo pipefail
pkgs=(libssl-dev zlib1g-dev liblzma-dev libzstd-dev libbz2-dev liblz4-dev xz-utils cpio qemu-system-x86)
# zstd(1): scripts/vm-bench.sh packs its floor initramfs like the image builder does (zstd), and a test
# decodes the image builder's zstd with it.
pkgs+=(zstd)
# The service VM's own kernel (scripts/build-kernel.sh): Debian's kernel source and its build tools
# (libelf-dev: objtool for the ORC unwinder; binutils: ld and size).
pkgs+=(linux-source-6.1 gcc make flex bison bc libelf-dev binutils)
# The static /init's minimal libcrypto (scripts/build-openssl.sh): Debian's openssl source package is
# downloaded by curl and unpacked with its patches by dpkg-source (dpkg-dev); perl runs Configure.
pkgs+=(curl dpkg-dev perl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v swift >/dev/null 2>&1; then
  for d in /opt/swift/usr/bin /usr/share/swift/usr/bin; do [ -x "$d/swift" ] && { echo "install-deps: swift found in $d but not on PATH; add it" >&2; break; }; done
  echo "install-deps: Swift 6 toolchain not found (https://www.swift.org/install/linux/)" >&2
  exit 1
fi

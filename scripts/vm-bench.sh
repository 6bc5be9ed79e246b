#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Boot benchmark of the service VM (not a test: it prints figures, it asserts nothing).
#
#   scripts/vm-bench.sh [N]        (default N=5; needs `make image` first)
#
# 1. Builds a do-nothing static /init (C, gcc -static): mount devtmpfs, print the same
#    `EXECGATE-READY` line the verifier prints, reboot(RB_POWER_OFF). That is the floor: the same
#    kernel, QEMU and launcher, with nothing of ours running.
# 2. Boots floor and ExecGate alternately N times through the launcher (`execgate vm start --json`,
#    identical QEMU settings: same -M/-cpu/-m/accel/cmdline/vsock device), and prints p50 and the
#    range of boot→ready (QEMU spawned → READY seen on the console) for both, and the ratio.
# 3. Bisects the least RAM (MiB, to MEM_STEP) at which the floor boots, and at which ExecGate
#    boots and serves: `execgate vm selftest --memory M` passes all its checks (the verifier answers
#    hello, verifies real signed modules and rejects a tampered one over vsock loopback).
#    Then the least RAM at which the running service answers a verdict request for the largest
#    module of the Debian package (amdgpu.ko, 19.5 MB) with its claim (`request module --claim elf`:
#    every executable section's bytes), sent from the host through the vsock backend.
# 4. Prints sizes: vmlinux text+data (`size`), file; initramfs compressed; /init stripped.
# Also the guest's own clocks from its READY line (p50 of kernel_ms, init_ms, listen_ms) and the
# request budget the service derived from its memory (ServiceVM/README.md, "Memory budget").
#
# Environment: EXECGATE (default .build-static/release/execgate), IMAGE_DIR (Images/out),
# MEM (RAM for the timing runs, MiB; default the launcher's default), MEM_STEP (4), ACCEL (auto),
# BIG_MODULE (default: the largest .ko under .cache/kernel/current; empty string: skip that bisect),
# CONSOLE_DIR (keep each timed boot's console log there, e.g. for the guest's own stage lines).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
exe=${EXECGATE:-.build-static/release/execgate}
img=${IMAGE_DIR:-Images/out}
step=${MEM_STEP:-4}
accel=${ACCEL:-auto}
[ -x "$exe" ] || { echo "vm-bench: $exe not found: run make image" >&2; exit 2; }
[ -f "$img/vmlinux" ] && [ -f "$img/initramfs.cpio.zst" ] || { echo "vm-bench: no image in $img: run make image" >&2; exit 2; }
for t in gcc zstd cpio; do command -v "$t" >/dev/null || { echo "vm-bench: $t not found (scripts/install-deps.sh)" >&2; exit 2; }; done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/execgate-bench.XXXXXX")
trap 'for v in floor execgate; do "$exe" vm stop --name bench-$v --state-dir "$tmp/run" >/dev/null 2>&1 || true; done; rm -rf "$tmp"' EXIT

# ---- the floor image -------------------------------------------------------------------------
mkdir -p "$tmp/floor-root/dev" "$tmp/floor"
cat >"$tmp/floor-init.c" <<'EOF'
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>
int main(void) {
    static const char line[] = "EXECGATE-READY floor\n";
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    int fd = open("/dev/console", O_WRONLY);
    if (fd >= 0) write(fd, line, sizeof line - 1);
    reboot(RB_POWER_OFF);
    for (;;) pause();
}
EOF
gcc -O2 -static -s -o "$tmp/floor-root/init" "$tmp/floor-init.c"
# Compressed like the real image (Compression.zstd: level 19, 128 KiB window), so floor and ExecGate run the
# same unpacker and the ratio compares what /init adds, not two decompressors.
(cd "$tmp/floor-root" && find . | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --reproducible --quiet) \
  | zstd -q -19 --zstd=wlog=17 -c >"$tmp/floor/initramfs.cpio.zst"
ln -s "$(cd "$img" && pwd)/vmlinux" "$tmp/floor/vmlinux"
ln -s "$(cd "$img" && pwd)" "$tmp/execgate"

# The launcher's default RAM, from its help text (the option's help may wrap over several lines).
default_mem=$("$exe" vm start --help | awk '/^  --memory / {on=1} on && /^  --/ && !/^  --memory / {on=0} on' | tr '\n' ' ' | grep -oE 'default: [0-9]+' | grep -oE '[0-9]+')
mem=${MEM:-${default_mem:-256}}

boot_ms() {  # $1 = floor|execgate, $2 = MiB → prints boot_ms, or "fail"
  local out
  if out=$("$exe" vm start --name "bench-$1" --state-dir "$tmp/run" --image-dir "$tmp/$1" --memory "$2" \
             --accel "$accel" --timeout 60 --json 2>"$tmp/err"); then
    # The guest's own clocks (ExecGate only): kernel start → /init, PID 1's set-up, service set-up.
    [ -n "${CONSOLE_DIR:-}" ] && mkdir -p "$CONSOLE_DIR" && cp "$tmp/run/bench-$1/console.log" "$CONSOLE_DIR/$1-$(date +%s%N).log"
    grep -ho 'kernel_ms=[0-9.]* init_ms=[0-9.]* listen_ms=[0-9.]*' "$tmp/run/bench-$1/console.log" >>"$tmp/$1.stages" 2>/dev/null || true
    grep -ho 'memory available .*' "$tmp/run/bench-$1/console.log" >"$tmp/$1.memory" 2>/dev/null || true
    "$exe" vm stop --name "bench-$1" --state-dir "$tmp/run" >/dev/null 2>&1 || true
    sed -nE 's/.*"boot_ms": ?([0-9]+).*/\1/p' <<<"$out"
  else
    "$exe" vm stop --name "bench-$1" --state-dir "$tmp/run" >/dev/null 2>&1 || true
    echo fail
  fi
}
p50() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) {print "n/a"; exit} print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
range() { sort -n | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "–" hi}'; }

echo "vm-bench: $n alternating boots each at $mem MiB (accel $accel), kernel $img/vmlinux"
: >"$tmp/floor.ms"; : >"$tmp/execgate.ms"
for i in $(seq 1 "$n"); do
  for v in floor execgate; do
    ms=$(boot_ms "$v" "$mem")
    [ "$ms" = fail ] && { echo "vm-bench: $v boot $i failed:" >&2; cat "$tmp/err" >&2; exit 1; }
    echo "$ms" >>"$tmp/$v.ms"
  done
  echo "  round $i: floor $(tail -1 "$tmp/floor.ms") ms, execgate $(tail -1 "$tmp/execgate.ms") ms"
done
f50=$(p50 <"$tmp/floor.ms"); e50=$(p50 <"$tmp/execgate.ms")
if [ -s "$tmp/execgate.stages" ]; then
  stage() { sed -nE "s/.*$1=([0-9.]+).*/\1/p" "$tmp/execgate.stages" | awk '{printf "%d\n", $1}' | p50; }
  echo "execgate guest clocks p50: kernel start → /init $(stage kernel_ms) ms (includes unpacking the initramfs), PID 1 set-up $(stage init_ms) ms, service set-up → listening $(stage listen_ms) ms"
fi
[ -s "$tmp/execgate.memory" ] && echo "execgate at $mem MiB: $(cat "$tmp/execgate.memory")"
echo "boot→ready p50: floor $f50 ms ($(range <"$tmp/floor.ms")), execgate $e50 ms ($(range <"$tmp/execgate.ms")), ratio $(awk -v e="$e50" -v f="$f50" 'BEGIN {printf "%.2f", e / f}')×"

# ---- least RAM -------------------------------------------------------------------------------
serves() { "$exe" vm selftest --name bench-mem --state-dir "$tmp/run" --image-dir "$img" --memory "$1" --accel "$accel" --timeout 90 >"$tmp/selftest.out" 2>&1; }
boots_floor() { [ "$(boot_ms floor "$1")" != fail ]; }
bisect() {  # $1 = predicate, $2 = lo (fails or untested), $3 = hi (must pass) → least passing, to $step
  local pred=$1 lo=$2 hi=$3 mid
  $pred "$hi" || { echo "none≤$hi"; return; }
  while [ $((hi - lo)) -gt "$step" ]; do
    mid=$(( (lo + hi) / 2 / step * step ))
    [ "$mid" -le "$lo" ] && mid=$((lo + step))
    if $pred "$mid"; then hi=$mid; else lo=$mid; fi
  done
  echo "$hi"
}
echo "least RAM (MiB, step $step): floor boots at $(bisect boots_floor 8 "$mem"), execgate boots and serves (vm selftest) at $(bisect serves 8 "$mem")"
big=${BIG_MODULE-$(find -L .cache/kernel/current/lib/modules -name '*.ko' -printf '%s %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2)}
serves_big() {  # boot the service at $1 MiB, send the big module with its claim from the host
  local ok=1 addr
  addr=$("$exe" vm start --name bench-big --state-dir "$tmp/run" --image-dir "$img" --memory "$1" --accel "$accel" --timeout 90 --json 2>"$tmp/err" \
         | sed -nE 's/.*"address": ?"(hybrid:[^"]+)".*/\1/p') || true
  if [ -n "$addr" ]; then
    "$exe" request module "$big" --connect "$addr" --claim elf --timeout 60 >"$tmp/big.out" 2>&1
    case $? in 0|1) ok=0 ;; esac   # allow or deny: the service answered
  fi
  "$exe" vm stop --name bench-big --state-dir "$tmp/run" >/dev/null 2>&1 || true
  return $ok
}
if [ -n "$big" ] && [ -f "$big" ]; then
  echo "least RAM (MiB, step $step) that answers a verdict on $(basename "$big") ($(stat -L -c %s "$big") bytes) with --claim elf: $(bisect serves_big 8 "$mem")"
  echo "  the answer at $mem MiB: $(serves_big "$mem"; head -c 300 "$tmp/big.out")"
fi

# ---- sizes -----------------------------------------------------------------------------------
read -r text data _ < <(size "$img/vmlinux" | awk 'NR==2 {print $1, $2, $3}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "vmlinux: text+data $(mib $((text + data))) (text $(mib "$text"), data $(mib "$data")), file $(mib "$(stat -c %s "$img/vmlinux")")"
echo "initramfs.cpio.zst: $(mib "$(stat -c %s "$img/initramfs.cpio.zst")") compressed ($(stat -c %s "$img/initramfs.cpio.zst") bytes), $(mib "$(zstd -dc "$img/initramfs.cpio.zst" | wc -c)") unpacked"
init_src=$(sed -n 's/^init_binary=//p' "$img/image.txt" 2>/dev/null || true)
# image.txt names /init as `image build` was given it, often relative to the checkout that built the
# image (Images/out is two levels below it): resolve it there, so IMAGE_DIR=<another checkout> works.
case "$init_src" in /*|"") ;; *) [ -f "$img/../../$init_src" ] && init_src=$(cd "$img/../.." && pwd)/$init_src ;; esac
[ -n "$init_src" ] && [ -f "$init_src" ] && echo "/init ($init_src): $(mib "$(stat -c %s "$init_src")"), $(stat -c %s "$init_src") bytes ($(file -b "$init_src" 2>/dev/null | grep -o 'stripped\|not stripped' || echo '?'))"
echo "floor /init: $(stat -c %s "$tmp/floor-root/init") bytes stripped; floor initramfs $(stat -c %s "$tmp/floor/initramfs.cpio.zst") bytes"

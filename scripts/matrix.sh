#!/usr/bin/env bash
# The kernel × CPU-model matrix: for each Debian kernel row and each QEMU CPU model, capture a broad
# module set with `execgate capture --kaslr` (TCG), explain it with `execgate explain --json`, and
# print one figure per cell: explained N of M captured modules, unexplained bytes, what the guest
# kernel reported for its mitigations (/sys/devices/system/cpu/vulnerabilities) and the return thunk.
# It prints figures and asserts nothing (make test has the asserting boot tests).
#
#   scripts/fetch-test-data.sh --flavours     # once: the 6.1 and 6.12 cloud and rt packages
#   scripts/fetch-test-data.sh --point-releases   # once: older point releases (rows 61p47, 612p100)
#   scripts/fetch-test-data.sh --newest       # once: 6.12.118 generic/cloud/rt, 6.1.0-57 cloud/rt
#                                             #   (rows 612p118, 612p118cloud, 612p118rt, 61p57cloud, 61p57rt)
#   make image                                # the static execgate (the guest's /init)
#   nice -n 10 scripts/matrix.sh [--kernels "61 61cloud 61rt 612 612cloud 612rt 61p47 612p100"]
#                                [--cpus "M1 M2@ARG+ARG ..."] [--out DIR]
#                                [--modules FILE] [--kernel-args ARGS] [--smp N] [--maxcpus M] [--explain-only]
#
# --modules FILE: the module list (default scripts/matrix/modules.txt, 127 names);
# scripts/matrix/modules-b.txt is a second list of 145 other names (NIC, wireless, USB, ATA/NVMe,
# HID, more file systems, xt_*, qdiscs, dm targets, i915): use it with its own --out, e.g.
#   nice -n 10 scripts/matrix.sh --modules scripts/matrix/modules-b.txt --out .cache/matrix-b
#
# A CPU entry MODEL@ARG+ARG… boots that model with extra kernel arguments (a mitigation choice,
# e.g. EPYC-Rome@spectre_v2=retpoline,lfence or Skylake-Client-IBRS@mitigations=off).
# Captures are kept per cell under OUT/<kernel>/<cpu>/ (default OUT = .cache/matrix) and reused;
# --explain-only re-runs only the explain step over existing captures (after a rule change).
# --smp N boots N CPUs (QEMU -smp N; default 1) and --maxcpus M makes M possible (-smp N,maxcpus=M):
# one present CPU makes the kernel patch `lock` prefixes for a uniprocessor, more possible CPUs keep
# modules tracked to switch back. A cell with either is kept apart: OUT/<kernel>/<cpu>.smpN[maxM]/.
# One boot at a time, on purpose: TCG boots are CPU-bound and this runs beside builds.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

kernels="61 61cloud 61rt 612"
# CPU models (QEMU 7.2 under TCG: no ARCH_CAPABILITIES, so no eIBRS part): Skylake-Client-IBRS
# (Intel, retbleed-affected: retpolines + ITS aligned branch/return thunks), Haswell-noTSX-IBRS
# (Intel, not ITS/retbleed-affected: plain retpolines, no return thunk), EPYC-Rome (Zen 2:
# retbleed untrained return thunk, SRSO safe RET: srso_return_thunk), EPYC-Milan (Zen 3: SRSO
# safe RET: srso_alias_return_thunk). Cascadelake-Server reports what Skylake-Client-IBRS does.
cpus="Skylake-Client-IBRS Haswell-noTSX-IBRS EPYC-Rome EPYC-Milan"
# cryptomgr.notests=1: the crypto API's registration self-tests (crypto/testmgr.c) take seconds per
# algorithm under TCG; they run in the core and write nothing into module text, so the end state of
# every module is the same with or without them.
kargs="cryptomgr.notests=1"
out="$root/.cache/matrix"
list="$root/scripts/matrix/modules.txt"
explain_only=0
smp=""
maxcpus=""
bin=${EXECGATE:-$root/.build-static/release/execgate}
init=${EXECGATE_INIT:-$root/.build-static/release/execgate}
while [ $# -gt 0 ]; do
  case "$1" in
    --kernels) kernels=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --modules) list=$2; shift 2 ;;
    --kernel-args) kargs=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --maxcpus) maxcpus=$2; shift 2 ;;
    --explain-only) explain_only=1; shift ;;
    *) echo "usage: $0 [--kernels LIST] [--cpus LIST] [--out DIR] [--modules FILE] [--kernel-args ARGS] [--smp N] [--maxcpus M] [--explain-only]" >&2; exit 2 ;;
  esac
done
# The CPU counts (execgate capture checks the range and maxcpus >= smp); the cell's name carries them.
smp_args=() tag=""
if [ -n "$smp$maxcpus" ]; then
  smp_args=(--smp "${smp:-1}"); tag=".smp${smp:-1}"
  [ -n "$maxcpus" ] && { smp_args+=(--maxcpus "$maxcpus"); tag="${tag}max$maxcpus"; }
fi
[ -x "$bin" ] || { echo "matrix: no execgate at $bin (make image, or EXECGATE=PATH)" >&2; exit 2; }
[ -x "$init" ] || { echo "matrix: no static execgate at $init (make image, or EXECGATE_INIT=PATH)" >&2; exit 2; }

kernel_dir() {
  case "$1" in
    61) echo "$root/.cache/kernel/current" ;;
    61cloud) echo "$root/.cache/kernel-flavours/linux-image-6.1.0-56-cloud-amd64" ;;
    61rt) echo "$root/.cache/kernel-flavours/linux-image-6.1.0-56-rt-amd64" ;;
    612) echo "$root/.cache/kernel-6.12/linux-image-6.12.117+deb12-amd64" ;;
    612cloud) echo "$root/.cache/kernel-flavours/linux-image-6.12.117+deb12-cloud-amd64" ;;
    612rt) echo "$root/.cache/kernel-flavours/linux-image-6.12.117+deb12-rt-amd64" ;;
    61p47) echo "$root/.cache/kernel-flavours/linux-image-6.1.0-47-amd64" ;;
    612p100) echo "$root/.cache/kernel-flavours/linux-image-6.12.100+deb12-amd64" ;;
    612p118) echo "$root/.cache/kernel-flavours/linux-image-6.12.118+deb12-amd64" ;;
    612p118cloud) echo "$root/.cache/kernel-flavours/linux-image-6.12.118+deb12-cloud-amd64" ;;
    612p118rt) echo "$root/.cache/kernel-flavours/linux-image-6.12.118+deb12-rt-amd64" ;;
    61p57cloud) echo "$root/.cache/kernel-flavours/linux-image-6.1.0-57-cloud-amd64" ;;
    61p57rt) echo "$root/.cache/kernel-flavours/linux-image-6.1.0-57-rt-amd64" ;;
    *) echo "$1" ;;
  esac
}

# The list's names this kernel ships as a loadable module file (.ko, .ko.xz, .ko.zst, .ko.gz); the
# others are printed as "not a module here" (absent from the flavour, or built in).
names_for() {
  local mdir=$1 have
  have=$(find "$mdir/kernel" -name '*.ko*' -printf '%f\n' | sed -E 's/\.ko(\.(xz|zst|gz))?$//; s/-/_/g' | sort -u)
  for n in $(grep -v '^#' "$list" | sed 's/#.*//' | tr ' ' '\n' | sed 's/-/_/g' | grep -v '^$'); do
    if grep -qx "$n" <<<"$have"; then echo "$n"; else echo "-$n"; fi
  done
}

printf '%-8s %-40s %-9s %-10s %-6s %-11s %s\n' kernel cpu explained unexplained failed "boot s" "guest reports (spectre_v2 | retbleed | srso | its) ; x86_return_thunk"
for k in $kernels; do
  kdir=$(kernel_dir "$k")
  [ -d "$kdir/boot" ] || { echo "matrix: $k: no unpacked kernel at $kdir (scripts/fetch-test-data.sh --flavours, or --point-releases)" >&2; continue; }
  mdir=$(ls -d "$kdir"/lib/modules/* | head -1)
  all=$(names_for "$mdir")
  want=$(grep -v '^-' <<<"$all" | tr '\n' ',' | sed 's/,$//')
  absent=$(grep '^-' <<<"$all" | sed 's/^-//' | tr '\n' ' ')
  [ -n "$absent" ] && echo "# $k: not a loadable module in this kernel: $absent"
  for spec in $cpus; do
    c=${spec%%@*}
    extra=""
    [ "$spec" != "$c" ] && extra=" $(tr '+' ' ' <<<"${spec#*@}")"
    cell="$out/$k/$spec$tag"
    mkdir -p "$cell"
    t0=$(date +%s)
    if [ $explain_only = 0 ] || ! [ -d "$cell/kaslr" ]; then
      nice -n 10 "$bin" capture --init "$init" --kernel "$kdir" --modules "$want" --out "$cell" --cpu "$c" "${smp_args[@]}" --kaslr \
        --kernel-args "$kargs$extra" \
        --timeout 1800 --work-dir "$out/.work-$k" --json >"$cell/capture.json" 2>"$cell/capture.log"
    fi
    secs=$(( $(date +%s) - t0 ))
    if ! [ -f "$cell/kaslr/load-order.txt" ] && ! [ -f "$cell/load-order.txt" ]; then
      printf '%-8s %-40s %s\n' "$k" "$spec$tag" "capture failed: $(tail -1 "$cell/capture.log")"; continue
    fi
    nice -n 10 "$bin" explain "$cell/kaslr" --json >"$cell/explain.json" 2>"$cell/explain.log"
    sum=$(grep '"summary"' "$cell/explain.json" | sed -E 's/.*"explained":([0-9]+),"modules":([0-9]+),"unexplained_bytes":([0-9]+).*/\1 \2 \3/')
    read -r n m u <<<"${sum:-? ? ?}"
    failed=$(grep -c 'not captured' "$cell/capture.log")
    vul=$(for f in spectre_v2 retbleed spec_rstack_overflow indirect_target_selection; do
            v=$(grep -E "^$f[: ]" "$cell/kaslr/vulnerabilities.txt" 2>/dev/null | sed -E "s/^$f:? *//" | cut -c1-40)
            printf '%s | ' "${v:--}"; done)
    rtv=$(awk '$1 == "x86_return_thunk" {print substr($3, 3)}' "$cell/kaslr/kvars.txt" 2>/dev/null)
    rt=$( [ -n "$rtv" ] && awk -v a="$rtv" '$1 == a && ($2 == "T" || $2 == "t") {print $3; exit}' "$cell/kaslr/kallsyms.txt")
    printf '%-8s %-40s %-9s %-10s %-6s %-11s %s; %s\n' "$k" "$spec$tag" "$n/$m" "$u" "$failed" "$secs" "${vul% | }" "${rt:--}"
    grep '"verdict":"deny"' "$cell/explain.json" | sed -E 's/.*"module":"([^"]*)".*"rule":"([^"]*)","reason":"([^"]*)".*/    deny \1 (\2): \3/' | cut -c1-220
    grep 'not captured' "$cell/capture.log" | sed 's/^/    /' | cut -c1-200
  done
done

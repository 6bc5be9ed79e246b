#!/usr/bin/env bash
# Runs every test in two phases and ends with one plain summary line ("tests: N passed, N failed").
#   1. everything except guest-booting tests;
#   2. the guest-booting tests (classes named *BootTests), one at a time, with EXECGATE_VM_TEST=1
#      so that a missing image or QEMU fails instead of skipping.
# Full logs: .cache/test.log and .cache/test-boot.log.
# `--unit` runs phase 1 only (make check: minutes, no guest boots, no image needed).
# `--static` (make test-static) runs the suites that drive the `execgate` binary as a process
# (ExecGateCommandLineTests, ExecGateServiceTests) against the static one `make image` built, the
# binary `make run` starts on the host and the guest runs as /init (EXECGATE_BIN): phase 1 only.
# A static-only fault hides from the ordinary run, which drives the dynamic debug build (the
# static binary once took no SIGTERM at all: StaticBinarySignalsBootTests).
set -uo pipefail
unit_only=0; [ "${1:-}" = "--unit" ] && unit_only=1
static=0; [ "${1:-}" = "--static" ] && { static=1; unit_only=1; }
cd "$(dirname "$0")/.."
swift=${SWIFT:-swift}
mkdir -p .cache
quiet() { grep -Ev '^\[[0-9]+/[0-9]+\]|Test Case .* (started|passed)|^Test Suite .* (started|passed)'; }

only=()
if [ "$static" -eq 1 ]; then
  bin=$PWD/.build-static/release/execgate
  [ -x "$bin" ] || { echo "run-tests: no static execgate at $bin: run \`make image\`" >&2; exit 1; }
  export EXECGATE_BIN=$bin
  only=(--filter 'ExecGateCommandLineTests|ExecGateServiceTests')
fi
EXECGATE_REQUIRE_INPUTS=1 $swift test --skip-build --disable-swift-testing --skip BootTests "${only[@]}" 2>&1 | tee .cache/test.log | quiet
rc1=${PIPESTATUS[0]}
if [ "$unit_only" -eq 0 ]; then
  EXECGATE_VM_TEST=1 $swift test --skip-build --disable-swift-testing --filter BootTests 2>&1 | tee .cache/test-boot.log | quiet
  rc2=${PIPESTATUS[0]}
else
  : > .cache/test-boot.log; rc2=0
fi

# XCTest's final "Executed N tests, with F failures" line of each phase (the last one is the total).
total() { grep -E "^[[:space:]]*Executed [0-9]+ tests?, with" "$1" | tail -1; }
# "Executed N tests, with [S tests skipped and] F failures" → "N S F" (S = 0 when absent).
count() { sed -E 's/.*Executed ([0-9]+) tests?, with (([0-9]+) tests? skipped and )?([0-9]+) failures?.*/\1 0\3 \4/' ; }
read -r n1 s1 f1 < <(total .cache/test.log | count)
read -r n2 s2 f2 < <(total .cache/test-boot.log | count)
n1=$((10#${n1:-0})); s1=$((10#${s1:-0})); f1=$((10#${f1:-0})); n2=$((10#${n2:-0})); s2=$((10#${s2:-0})); f2=$((10#${f2:-0}))
[ "$rc1" -ne 0 ] && [ "$f1" -eq 0 ] && f1=1   # a crashed test process counts as a failure
[ "$rc2" -ne 0 ] && [ "$f2" -eq 0 ] && f2=1
failed=$((f1 + f2)); skipped=$((s1 + s2)); passed=$((n1 + n2 - failed - skipped))
echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
[ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ]

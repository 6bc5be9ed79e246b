#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# Soak: N minutes (default 5) of mixed good and hostile load against a release `execgate serve`,
# with a signed policy push every 10 s (HostilePeerTests.testSoak). Prints the serve process's
# peak RSS, requests served, the well-behaved clients' verdicts, errors and p99 latency against
# their unloaded p99. Not a timed test: `make test` skips it.
#
#   scripts/soak.sh [MINUTES]
set -eu
cd "$(dirname "$0")/.."
minutes="${1:-5}"
swift build -c release --product execgate
swift build --build-tests
EXECGATE_BIN="$PWD/.build/release/execgate" EXECGATE_SOAK_MINUTES="$minutes" \
    swift test --skip-build --disable-swift-testing --filter HostilePeerTests/testSoak 2>&1 | grep -E "^soak:|error|passed|failed"

#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
#
# Paired A/B benchmark of the explanation engine (not a test: it prints figures, it asserts nothing).
#
#   scripts/explain-ab.py [--rounds N] [--passes P] CAPTURE_DIR BINARY_A BINARY_B
#
# Why paired: on a shared host the engine's figure drifts by up to 9% within an hour (other tenants'
# use of the last-level cache and memory), more than most single changes move it; runs of A and B
# one after another take that drift as a difference. Here each round starts A and B at the same
# time, one on each of the two cores (`taskset`), and swaps the cores the next round, so whatever
# the host does during a round it does to both. Each run is `execgate explain CAPTURE_DIR --bench
# --passes P --json`; per run the sums of its modules' best passes (cold order and the service's
# order, docs/performance.md) are compared, B against A, round by round.
#
# Prints one line a round and the medians of B/A (with their range), and each binary's median ratio
# to SHA-256. An A/A run (the same binary twice) on this 2-core KVM guest reads 1.000 with rounds
# within ±2%: a median over 8 rounds tells changes of about 1% apart. Needs 2 CPUs and python3.
import argparse
import json
import os
import statistics
import subprocess
import sys


def parse():
    p = argparse.ArgumentParser(description="Paired A/B benchmark of `execgate explain --bench` (cores swapped each round).")
    p.add_argument("--rounds", type=int, default=8, help="rounds (each runs A and B once, at the same time; default 8)")
    p.add_argument("--passes", type=int, default=15, help="--passes for each run (default 15)")
    p.add_argument("capture", help="one boot's capture directory (e.g. a shared-corpus boot)")
    p.add_argument("a", help="binary A (the baseline)")
    p.add_argument("b", help="binary B (the change)")
    return p.parse_args()


def start(binary, cpu, capture, passes):
    return subprocess.Popen(["taskset", "-c", str(cpu), binary, "explain", capture, "--bench", "--passes", str(passes), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def figures(proc, name):
    out, err = proc.communicate()
    if proc.returncode not in (0, 1):
        sys.exit(f"explain-ab: {name} exited {proc.returncode}: {err.strip()[-400:]}")
    lines = out.strip().splitlines()
    if not lines:
        sys.exit(f"explain-ab: {name} printed nothing: {err.strip()[-400:]}")
    modules = json.loads(lines[-1])["bench"]["modules"]
    cold = sum(m["explain_best_s"] for m in modules)
    sha = sum(m["sha256_best_s"] for m in modules)
    svc = sum(m["explain_service_order_best_s"] for m in modules)
    svc_sha = sum(m["sha256_service_order_best_s"] for m in modules)
    return cold, cold / sha, svc, svc / svc_sha


def main():
    o = parse()
    if (os.cpu_count() or 1) < 2:
        sys.exit("explain-ab: needs 2 CPUs (A and B run at the same time, one on each)")
    for b in (o.a, o.b):
        if not os.access(b, os.X_OK):
            sys.exit(f"explain-ab: {b} is not an executable")
    cold, svc, ra, rb = [], [], [], []
    for r in range(o.rounds):
        ca, cb = (0, 1) if r % 2 == 0 else (1, 0)
        pa, pb = start(o.a, ca, o.capture, o.passes), start(o.b, cb, o.capture, o.passes)
        a, b = figures(pa, "A"), figures(pb, "B")
        ra.append(a)
        rb.append(b)
        cold.append(b[0] / a[0])
        svc.append(b[2] / a[2])
        print(f"round {r + 1}/{o.rounds} (A on cpu {ca}): A {a[0] * 1e6:.0f} µs {a[1]:.3f}×, service order {a[2] * 1e6:.0f} µs {a[3]:.3f}× | "
              f"B {b[0] * 1e6:.0f} µs {b[1]:.3f}×, service order {b[2] * 1e6:.0f} µs {b[3]:.3f}× | B/A {cold[-1]:.4f}, service order {svc[-1]:.4f}",
              flush=True)
    med = statistics.median
    print(f"B/A (sums of the modules' best passes): cold {med(cold):.4f} (rounds {min(cold):.4f}–{max(cold):.4f}), "
          f"service order {med(svc):.4f} ({min(svc):.4f}–{max(svc):.4f}), {o.rounds} rounds")
    print(f"ratio to SHA-256 (medians): A {med(x[1] for x in ra):.3f}×, service order {med(x[3] for x in ra):.3f}×; "
          f"B {med(x[1] for x in rb):.3f}×, service order {med(x[3] for x in rb):.3f}×")


if __name__ == "__main__":
    main()

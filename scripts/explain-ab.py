#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
#
# Paired A/B benchmark of the explanation engine (not a test: it prints figures, it asserts nothing).
#
#   scripts/explain-ab.py [--rounds N] [--passes P] CAPTURE_DIR BINARY_A BINARY_B
#
# Why paired: on a shared host the engine's figure drifts by 5-9% within an hour, and more between
# intervals (other tenants' use of the last-level cache and memory), more than most single changes
# move it; runs of A and B one after another take that drift as a difference. Here each round
# starts A and B at the same time, one on each of the first two cores (`taskset`), and swaps the
# cores and the starting order the next round, so whatever the host does during a round it does to
# both. Each run is `execgate explain CAPTURE_DIR --bench --passes P --json`; per run the sums of
# its modules' best passes (cold order and the service's order, docs/performance.md) are compared,
# B against A, round by round. The two runs share the last-level cache and memory bandwidth: B/A is
# the ratio under that contention (pulled slightly toward 1), not each binary alone.
#
# A run whose verdicts differ from the other's (allowed counts, exit status) stops the comparison:
# a change that denies early would read fast.
#
# Prints one line a round, the medians of B/A (with their range) and each binary's median ratio
# to SHA-256. An A/A run (the same binary twice) on this 2-core KVM guest reads 1.000 with rounds
# within about ±2%: a median over 8 rounds tells changes of about 1-2% apart. Needs CPUs 0 and 1,
# taskset (util-linux) and python3.
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import NamedTuple


class Run(NamedTuple):
    cold_s: float      # sum of the modules' best cold passes
    cold_ratio: float  # against the sum of their best SHA-256 passes
    svc_s: float       # the same in the service's order
    svc_ratio: float
    allowed: tuple     # (allowed cold, allowed in the service's order), and the exit status


def parse():
    p = argparse.ArgumentParser(description="Paired A/B benchmark of `execgate explain --bench` (cores swapped each round).")
    p.add_argument("--rounds", type=int, default=8, help="rounds, at least 1 (each runs A and B once, at the same time; default 8)")
    p.add_argument("--passes", type=int, default=15, help="--passes for each run (default 15)")
    p.add_argument("capture", help="one boot's capture directory (e.g. a shared-corpus boot)")
    p.add_argument("a", help="binary A (the baseline)")
    p.add_argument("b", help="binary B (the change)")
    o = p.parse_args()
    if o.rounds < 1:
        p.error("--rounds must be at least 1")
    return o


def start(binary, cpu, o, out):
    cmd = ["taskset", "-c", str(cpu), binary, "explain", o.capture, "--bench", "--passes", str(o.passes), "--json"]
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)


def figures(proc, out, name):
    _, err = proc.communicate()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{name} exited {proc.returncode}: {err.strip()[-400:]}")
    out.seek(0)
    lines = out.read().strip().splitlines()
    if not lines:
        raise RuntimeError(f"{name} printed nothing: {err.strip()[-400:]}")
    bench = json.loads(lines[-1])["bench"]
    modules = bench["modules"]
    if not modules:
        raise RuntimeError(f"{name}: the capture has no module to time")

    def total(key):
        values = [m[key] for m in modules]
        if any(v is None for v in values):
            raise RuntimeError(f"{name}: a module has no {key}")
        return sum(values)

    cold, sha = total("explain_best_s"), total("sha256_best_s")
    svc, svc_sha = total("explain_service_order_best_s"), total("sha256_service_order_best_s")
    allowed = (bench.get("allowed"), bench.get("service_order", {}).get("allowed"), proc.returncode)
    return Run(cold, cold / sha, svc, svc / svc_sha, allowed)


def main():
    o = parse()
    if not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("explain-ab: needs CPUs 0 and 1 (A and B run at the same time, one on each)")
    if shutil.which("taskset") is None:
        sys.exit("explain-ab: taskset not found (util-linux)")
    for b in (o.a, o.b):
        if not (os.path.isfile(b) and os.access(b, os.X_OK)):
            sys.exit(f"explain-ab: {b} is not an executable")
    cold, svc, ra, rb = [], [], [], []
    for r in range(o.rounds):
        ca, cb = (0, 1) if r % 2 == 0 else (1, 0)
        # Output to files, not pipes (a run must never wait on the other's reader), and the
        # starting order alternates with the cores.
        with tempfile.TemporaryFile("w+") as fa, tempfile.TemporaryFile("w+") as fb:
            if r % 2 == 0:
                pa = start(o.a, ca, o, fa)
                pb = start(o.b, cb, o, fb)
            else:
                pb = start(o.b, cb, o, fb)
                pa = start(o.a, ca, o, fa)
            try:
                a, b = figures(pa, fa, "A"), figures(pb, fb, "B")
            except (RuntimeError, ValueError, KeyError) as e:
                for p in (pa, pb):
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                sys.exit(f"explain-ab: round {r + 1}: {e}")
        if a.allowed != b.allowed:
            sys.exit(f"explain-ab: round {r + 1}: A and B judged differently (allowed cold, service order, exit status: "
                     f"A {a.allowed}, B {b.allowed}); timings of different verdicts are not comparable")
        ra.append(a)
        rb.append(b)
        cold.append(b.cold_s / a.cold_s)
        svc.append(b.svc_s / a.svc_s)
        print(f"round {r + 1}/{o.rounds} (A on cpu {ca}): "
              f"A {a.cold_s * 1e6:.0f} µs {a.cold_ratio:.3f}×, service order {a.svc_s * 1e6:.0f} µs {a.svc_ratio:.3f}× | "
              f"B {b.cold_s * 1e6:.0f} µs {b.cold_ratio:.3f}×, service order {b.svc_s * 1e6:.0f} µs {b.svc_ratio:.3f}× | "
              f"B/A {cold[-1]:.4f}, service order {svc[-1]:.4f}", flush=True)
    med = statistics.median
    print(f"B/A (sums of the modules' best passes): cold {med(cold):.4f} (rounds {min(cold):.4f}–{max(cold):.4f}), "
          f"service order {med(svc):.4f} ({min(svc):.4f}–{max(svc):.4f}), {o.rounds} rounds")
    print(f"ratio to SHA-256 (medians): A {med(x.cold_ratio for x in ra):.3f}×, service order {med(x.svc_ratio for x in ra):.3f}×; "
          f"B {med(x.cold_ratio for x in rb):.3f}×, service order {med(x.svc_ratio for x in rb):.3f}×")


if __name__ == "__main__":
    main()

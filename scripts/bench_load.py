#!/usr/bin/env python3
"""Time and peak memory of reading the real FaceNet graph into faceall's IR.

Runs `faceall inspect` (map + decode + import + shape inference) N times as
a child process and prints the median wall time, the peak RSS, and both as
ratios: peak RSS / file size, and our time against the 24.5 s coremltools
needs to convert the same graph (../shared/docs/ANCHORS.md).

    python3 scripts/bench_load.py [--runs 10] [--bin target/release/faceall]
"""
import argparse
import os
import resource
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/faceall"))
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache/models/graph_final.pb"))
    a = ap.parse_args()
    size = os.path.getsize(a.model)
    times = []
    peak = 0
    for _ in range(a.runs):
        t0 = time.perf_counter()
        p = subprocess.run([a.bin, "inspect", a.model, "--json"], capture_output=True)
        times.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(p.stderr.decode())
        # ru_maxrss of children is the largest any child reached (KiB on Linux).
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    med = statistics.median(times)
    print(f"model: {a.model} ({size / 1e6:.1f} MB)")
    print(f"load+import (faceall inspect, whole process): median {med * 1000:.1f} ms over {a.runs} runs "
          f"(min {min(times) * 1000:.1f} ms)")
    print(f"peak RSS: {peak / 1e6:.1f} MB = {peak / size:.2f}x the file size")
    print(f"vs coremltools convert 24.5 s (ANCHORS.md): {24.5 / med:.0f}x faster")


if __name__ == "__main__":
    main()

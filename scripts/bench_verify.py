#!/usr/bin/env python3
"""Time verify-parity on the real FaceNet (one input, Caffe and Core ML)
against the forward passes it has to make anyway.

    python3 scripts/bench_verify.py [--runs 3]

Prints the whole verify-parity time, the time of the bare forward passes
(faceall's TF executor, Caffe executor and Core ML executor, measured by
`cargo run --example bench_forward`), and the difference.
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/faceall")
MODEL = os.path.join(ROOT, ".cache/models/graph_final.pb")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([BIN, "convert-tf", MODEL, "--to", "caffe,coreml", "--out-dir", d, "--name", "fn"],
                       check=True, capture_output=True)
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            subprocess.run([BIN, "verify-parity", "--tf", MODEL, "--caffe", f"{d}/fn.prototxt", "--caffemodel",
                            f"{d}/fn.caffemodel", "--coreml", f"{d}/fn.mlmodel"], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        fwd = subprocess.run(["cargo", "run", "-q", "--release", "--example", "bench_forward", "--", d, "fn"],
                             cwd=ROOT, check=True, capture_output=True, text=True).stdout
    forward = float([l for l in fwd.splitlines() if l.startswith("forward total")][0].split()[-2])
    total = statistics.median(times)
    print(fwd.strip())
    print(f"verify-parity (TF reference + Caffe + Core ML, 1 input, whole process): median {total:.3f} s")
    print(f"beyond the forward passes: {total - forward / 1000:.3f} s (target: under 3 s)")


if __name__ == "__main__":
    main()

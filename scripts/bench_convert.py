#!/usr/bin/env python3
"""Wall time and peak memory of `faceall convert-tf` on the real FaceNet,
against coremltools' 24.5 s and tf2onnx's 33.6 s for the same graph
(../shared/docs/ANCHORS.md, same machine kind).

    python3 scripts/bench_convert.py [--runs 5] [--to caffe]
"""
import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHORS = {"coremltools convert (TF -> Core ML)": 24.5, "tf2onnx (TF -> ONNX)": 33.6}


def model_size(path):
    """Bytes of the model's files: a frozen graph; a SavedModel directory's
    files; a .meta file with the checkpoint beside it (PREFIX.index and
    PREFIX.data-*, PREFIX the meta file's stem or the one whose name starts
    with it)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    size = os.path.getsize(path)
    if path.endswith(".meta"):
        d, stem = os.path.dirname(path) or ".", os.path.basename(path)[:-5]
        size += sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
                    if f.startswith(stem) and (f.endswith(".index") or ".data-" in f))
    return size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--to", default="caffe")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/faceall"))
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache/models/graph_final.pb"))
    a = ap.parse_args()
    size = model_size(a.model)
    times = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(a.runs):
            t0 = time.perf_counter()
            p = subprocess.run([a.bin, "convert-tf", a.model, "--to", a.to, "--out-dir", out, "--json"],
                               capture_output=True)
            times.append(time.perf_counter() - t0)
            if p.returncode != 0:
                raise SystemExit(p.stderr.decode())
        written = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    med = statistics.median(times)
    print(f"model: {a.model} ({size / 1e6:.1f} MB), --to {a.to}, wrote {written / 1e6:.1f} MB")
    print(f"convert-tf, whole process: median {med:.3f} s over {a.runs} runs (min {min(times):.3f} s)")
    print(f"peak RSS: {peak / 1e6:.0f} MB = {peak / size:.2f}x the model size")
    for name, secs in ANCHORS.items():
        print(f"vs {name} {secs} s: {secs / med:.0f}x faster")


if __name__ == "__main__":
    main()

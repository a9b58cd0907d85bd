#!/usr/bin/env python3
"""faceall's ONNX conversion of the real FaceNet next to tf2onnx's, in one run.

Converts graph_final.pb with `faceall convert-tf --to onnx` and with tf2onnx
(`python -m tf2onnx.convert --graphdef`, opset 13, the tool users pick
today), each as a fresh process timed whole with its peak resident memory,
then runs both models in onnxruntime on the reference input and compares
their embeddings with TensorFlow's. Prints a markdown table.

    .cache/venv/bin/python scripts/bench_onnx_vs_tf2onnx.py [--runs 20]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, ".cache/models/graph_final.pb")
REF = os.path.join(ROOT, ".cache/facenet_ref")

# Runs a command and reports its wall time and peak RSS (its own process tree).
MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
dt = time.perf_counter() - t
if p.returncode:
    sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
    sys.exit(p.returncode)
print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure(cmd):
    p = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{cmd[0]} failed:\n{p.stderr}")
    secs, kb = p.stdout.split()
    return float(secs), int(kb) / 1024


def ort_run(path, feed_name, x, runs):
    import onnxruntime as ort

    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = s.get_outputs()[0].name
    y = s.run([out], {feed_name: x})[0]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run([out], {feed_name: x})
        times.append(time.perf_counter() - t)
    return y, float(np.median(times)) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    import onnx

    man = json.load(open(os.path.join(REF, "manifest.json")))
    x = np.load(os.path.join(REF, man["inputs"][0]["file"])).astype(np.float32)
    want = np.load(os.path.join(REF, next(t["file"] for t in man["tensors"] if t["name"] == "embeddings")))
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        ours = os.path.join(d, "faceall.onnx")
        theirs = os.path.join(d, "tf2onnx.onnx")
        rows["faceall"] = measure([os.path.join(ROOT, "target/release/faceall"), "convert-tf", MODEL, "--to", "onnx",
                                   "--out-dir", d, "--name", "faceall"])
        rows["tf2onnx"] = measure([sys.executable, "-m", "tf2onnx.convert", "--graphdef", MODEL,
                                   "--inputs", "input:0", "--outputs", "embeddings:0", "--opset", "13",
                                   "--output", theirs])
        result = {}
        for tool, path in [("faceall", ours), ("tf2onnx", theirs)]:
            m = onnx.load(path)
            onnx.checker.check_model(m, full_check=True)
            feed = m.graph.input[0].name
            y, ms = ort_run(path, feed, x, a.runs)
            dims = lambda v: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]  # noqa: E731
            ops = Counter(n.op_type for n in m.graph.node)
            result[tool] = {
                "input": f"{feed} {dims(m.graph.input[0])}",
                "output": f"{m.graph.output[0].name} {dims(m.graph.output[0])}",
                "nodes": len(m.graph.node),
                "transposes": ops.get("Transpose", 0),
                "size": os.path.getsize(path) / 1e6,
                "diff": float(np.abs(y.reshape(want.shape) - want).max()),
                "ms": ms,
                "y": y.reshape(want.shape),
            }
    f, t = result["faceall"], result["tf2onnx"]
    (fs, fm), (ts, tm) = rows["faceall"], rows["tf2onnx"]
    print(f"| FaceNet (graph_final.pb) | faceall convert-tf --to onnx | tf2onnx {__import__('tf2onnx').__version__} --opset 13 |")
    print("| --- | --- | --- |")
    print(f"| needs TensorFlow installed | no | yes |")
    print(f"| conversion time (whole process, this run) | {fs:.2f} s | {ts:.1f} s ({ts / fs:.0f}x) |")
    print(f"| peak memory of the conversion | {fm:.0f} MB | {tm:.0f} MB ({tm / fm:.0f}x) |")
    print(f"| input | {f['input']} | {t['input']} |")
    print(f"| output | {f['output']} | {t['output']} |")
    print(f"| nodes (of which Transpose) | {f['nodes']} ({f['transposes']}) | {t['nodes']} ({t['transposes']}) |")
    print(f"| file size | {f['size']:.1f} MB | {t['size']:.1f} MB |")
    print(f"| max abs difference from TensorFlow (onnxruntime) | {f['diff']:.2e} | {t['diff']:.2e} |")
    print(f"| max abs difference between the two | {float(np.abs(f['y'] - t['y']).max()):.2e} | |")
    print(f"| onnxruntime latency, batch 1 (median of {a.runs}) | {f['ms']:.1f} ms | {t['ms']:.1f} ms |")


if __name__ == "__main__":
    main()

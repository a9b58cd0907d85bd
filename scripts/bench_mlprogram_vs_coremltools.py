#!/usr/bin/env python3
"""faceall's ML Program of the real FaceNet next to coremltools' own, in one run.

Converts graph_final.pb with `faceall convert-tf --to mlprogram` and with
coremltools 9 (`ct.convert` of the graph wrapped as a concrete function,
convert_to="mlprogram", float32 and float16), each in a fresh process whose
wall time and peak resident memory are measured here, and prints a markdown
table: time, peak memory, operation counts, package size, and each
package's route through coremltools' milproto loader -> NeuralNetwork ->
onnxmltools -> onnxruntime (scripts/check_mlprogram.py) against TF.

    python3 scripts/bench_mlprogram_vs_coremltools.py
"""
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, ".cache/models/graph_final.pb")
CASE = os.path.join(ROOT, ".cache/facenet_ref")

MEASURE = r"""
import resource, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
dt = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("MEASURED", dt, rss, p.returncode)
sys.stdout.write(p.stdout[-3000:]); sys.stderr.write(p.stderr[-3000:])
"""


def measured(cmd):
    p = subprocess.run([sys.executable, "-c", MEASURE] + cmd, capture_output=True, text=True)
    line = next((l for l in p.stdout.splitlines() if l.startswith("MEASURED")), None)
    if line is None or line.split()[3] != "0":
        print(p.stdout[-2000:], p.stderr[-2000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    _, dt, rss, _ = line.split()
    return float(dt), int(rss) / 1024, p.stdout


def package_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def ops(path):
    import coremltools as ct

    spec = ct.utils.load_spec(path)
    f = spec.mlProgram.functions["main"]
    b = f.block_specializations[f.opset]
    c = collections.Counter(op.type for op in b.operations)
    consts = c.pop("const", 0)
    return sum(c.values()), consts, dict(c.most_common(6)), spec.specificationVersion


def route(path, fp16):
    extra = ["--normalised", "--tolerance", "1e-2"] if fp16 else []
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/check_mlprogram.py"), path, CASE] + extra,
                       capture_output=True, text=True)
    for l in p.stdout.splitlines():
        if l.startswith("{") and '"output": true' in l:
            return f"{json.loads(l)['max_abs']:.2e}"
    tail = [l for l in (p.stderr or "").splitlines() if l.strip()][-1:] or ["?"]
    return "fails: " + tail[0][:90]


def main():
    with tempfile.TemporaryDirectory() as d:
        rows = []
        for fp16 in (False, True):
            tag = "fp16" if fp16 else "fp32"
            name = f"faceall_{tag}"
            cmd = [os.path.join(ROOT, "target/release/faceall"), "convert-tf", MODEL, "--to", "mlprogram",
                   "--out-dir", d, "--name", name] + (["--fp16"] if fp16 else [])
            t, rss, _ = measured(cmd)
            rows.append((f"faceall convert-tf ({tag})", t, rss, os.path.join(d, name + ".mlpackage"), fp16))
            out = os.path.join(d, f"coremltools_{tag}.mlpackage")
            code = f"""
import warnings, tensorflow as tf, coremltools as ct
warnings.filterwarnings('ignore')
gd = tf.compat.v1.GraphDef(); gd.ParseFromString(open({MODEL!r}, 'rb').read())
def imp(): tf.compat.v1.import_graph_def(gd, name='')
w = tf.compat.v1.wrap_function(imp, [])
fn = w.prune(w.graph.get_tensor_by_name('input:0'), w.graph.get_tensor_by_name('embeddings:0'))
m = ct.convert([fn], source='tensorflow', convert_to='mlprogram',
               compute_precision=ct.precision.{'FLOAT16' if fp16 else 'FLOAT32'})
m.save({out!r})
"""
            t, rss, _ = measured([sys.executable, "-c", code])
            rows.append((f"coremltools 9 ct.convert ({tag})", t, rss, out, fp16))
        print("| | time | peak memory | MIL ops (+ consts) | most used | spec | package | vs TF through milproto -> NN -> onnxruntime |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for label, t, rss, path, fp16 in rows:
            n, consts, most, spec = ops(path)
            print(f"| {label} | {t:.2f} s | {rss:,.0f} MB | {n} (+{consts}) | {most} | {spec} | "
                  f"{package_size(path) / 1e6:.1f} MB | {route(path, fp16)} |")
        print()
        print("fp16 rows: max abs difference of the L2-normalised embedding; fp32 rows: of the raw embedding.")


if __name__ == "__main__":
    main()

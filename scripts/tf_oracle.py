#!/usr/bin/env python3
"""TensorFlow as an oracle: run a frozen GraphDef and save named tensors.

    tf_oracle.py MODEL.pb OUT_DIR NAME=input.npy [...] --fetch TENSOR [...]

Writes OUT_DIR/<i>.npy for the i-th fetched tensor. faceall's verify-parity
embeds this script and runs it with `--reference tensorflow`.
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

try:
    import numpy as np
    import tensorflow as tf
except ImportError as e:  # pragma: no cover - reported to the caller
    print(f"faceall-oracle: {e}", file=sys.stderr)
    sys.exit(3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--fetch", nargs="+", required=True)
    a = ap.parse_args()
    tf.compat.v1.disable_eager_execution()
    gd = tf.compat.v1.GraphDef()
    with open(a.model, "rb") as f:
        gd.ParseFromString(f.read())
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.import_graph_def(gd, name="")
    name = lambda n: n if ":" in n else n + ":0"  # noqa: E731
    feeds = {}
    for spec in a.inputs:
        k, path = spec.split("=", 1)
        feeds[g.get_tensor_by_name(name(k))] = np.load(path)
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    with tf.compat.v1.Session(graph=g, config=cfg) as s:
        outs = s.run([g.get_tensor_by_name(name(f)) for f in a.fetch], feeds)
    os.makedirs(a.out, exist_ok=True)
    for i, o in enumerate(outs):
        np.save(os.path.join(a.out, f"{i}.npy"), np.asarray(o, dtype=np.float32))


if __name__ == "__main__":
    main()

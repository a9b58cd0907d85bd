#!/usr/bin/env python3
"""TensorFlow as an oracle: run a TF model and save named tensors.

    tf_oracle.py MODEL OUT_DIR NAME=input.npy [...] --fetch TENSOR [...]
                 [--signature KEY] [--tag-set TAGS] [--checkpoint PREFIX]

MODEL is a frozen GraphDef (.pb), a SavedModel directory (TF1 or TF2) or a
TF1 meta graph (.meta, with --checkpoint PREFIX). SavedModels and
checkpoints are loaded TensorFlow's own way (a TF2 SavedModel with
tf.saved_model.load and its signature called; a TF1 SavedModel with the v1
loader; a meta graph with import_meta_graph + Saver.restore), never through
faceall's reading of them, so a variable faceall resolved wrongly shows as a
difference.

An input or fetch may be a signature key (as faceall names a SavedModel's
inputs and outputs) or a tensor of the top-level graph. A tensor TF does not
expose (a node inside a TF2 function body, which faceall inlines) is not
fetched: OUT_DIR/fetched.json lists the indices of those that were, and
OUT_DIR/<i>.npy holds the i-th. faceall's verify-parity embeds this script
and runs it with `--reference tensorflow`.
"""
import argparse
import json
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


def is_tf2(saved_dir):
    """A TF2 SavedModel (its meta graph has an object graph): loaded the TF2
    way, tf.saved_model.load, as its users do."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_dir, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    return any(len(mg.object_graph_def.nodes) > 0 for mg in sm.meta_graphs)


def write_out(out, fetched):
    os.makedirs(out, exist_ok=True)
    for i, o in fetched:
        np.save(os.path.join(out, f"{i}.npy"), np.asarray(o, dtype=np.float32))
    with open(os.path.join(out, "fetched.json"), "w") as f:
        json.dump([i for i, _ in fetched], f)


def run_tf2(a, saved_dir):
    """Call the signature; its outputs are what TF exposes (the tensors
    inside its functions are not)."""
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tags = [t for t in a.tag_set.split(",") if t]
    loaded = tf.saved_model.load(saved_dir, tags=tags)
    sigs = loaded.signatures
    key = a.signature or "serving_default"
    if key not in sigs and a.signature is None and len(sigs) == 1:
        key = next(iter(sigs.keys()))
    if key not in sigs:
        print(f"faceall-oracle: no signature {key}", file=sys.stderr)
        sys.exit(2)
    f = sigs[key]
    feeds = {}
    for spec in a.inputs:
        k, path = spec.split("=", 1)
        feeds[k] = tf.constant(np.load(path))
    res = f(**feeds)
    write_out(a.out, [(i, res[n].numpy()) for i, n in enumerate(a.fetch) if n in res])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--fetch", nargs="+", required=True)
    ap.add_argument("--signature", default=None)
    ap.add_argument("--tag-set", default="serve")
    ap.add_argument("--checkpoint", default=None)
    a = ap.parse_args()
    saved_dir = None
    if os.path.isdir(a.model):
        saved_dir = a.model
    elif os.path.basename(a.model) == "saved_model.pb":
        saved_dir = os.path.dirname(a.model) or "."
    if saved_dir is not None and is_tf2(saved_dir):
        return run_tf2(a, saved_dir)
    tf.compat.v1.disable_eager_execution()
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    g = tf.Graph()
    s = tf.compat.v1.Session(graph=g, config=cfg)
    sig_in, sig_out = {}, {}
    with g.as_default():
        if saved_dir is not None:
            tags = [t for t in a.tag_set.split(",") if t]
            mg = tf.compat.v1.saved_model.loader.load(s, tags, saved_dir)
            key = a.signature or "serving_default"
            if key not in mg.signature_def and a.signature is None and len(mg.signature_def) == 1:
                key = next(iter(mg.signature_def))
            if key in mg.signature_def:
                sig_in = {k: v.name for k, v in mg.signature_def[key].inputs.items()}
                sig_out = {k: v.name for k, v in mg.signature_def[key].outputs.items()}
        elif a.model.endswith(".meta"):
            saver = tf.compat.v1.train.import_meta_graph(a.model)
            if a.checkpoint is None:
                print("faceall-oracle: a .meta file needs --checkpoint", file=sys.stderr)
                sys.exit(2)
            saver.restore(s, a.checkpoint)
        else:
            gd = tf.compat.v1.GraphDef()
            with open(a.model, "rb") as f:
                gd.ParseFromString(f.read())
            tf.compat.v1.import_graph_def(gd, name="")
    name = lambda n: n if ":" in n else n + ":0"  # noqa: E731

    def tensor(n, sig):
        if n in sig:
            return g.get_tensor_by_name(sig[n])
        try:
            return g.get_tensor_by_name(name(n))
        except (KeyError, ValueError):
            return None

    feeds = {}
    for spec in a.inputs:
        k, path = spec.split("=", 1)
        t = tensor(k, sig_in)
        if t is None:
            print(f"faceall-oracle: the model has no input {k}", file=sys.stderr)
            sys.exit(2)
        feeds[t] = np.load(path)
    fetched = [(i, tensor(f, sig_out)) for i, f in enumerate(a.fetch)]
    fetched = [(i, t) for i, t in fetched if t is not None]
    outs = s.run([t for _, t in fetched], feeds)
    s.close()
    write_out(a.out, [(i, o) for (i, _), o in zip(fetched, outs)])


if __name__ == "__main__":
    main()

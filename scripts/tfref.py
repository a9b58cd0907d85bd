"""Shared helpers for faceall's TensorFlow reference scripts.

Runs TensorFlow deterministically (one thread, oneDNN off) so that
re-running a generator reproduces its outputs.
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.compat.v1.disable_eager_execution()
tf.compat.v1.disable_control_flow_v2()


def session_config():
    return tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=1
    )


def tensor_name(name):
    return name if ":" in name else name + ":0"


def run_graph_def(graph_def, feeds, fetches):
    """Import graph_def into a fresh graph and run it.

    feeds: {input node name: ndarray}; fetches: tensor names ("node" or "node:k").
    Returns a list of ndarrays in the order of fetches."""
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=g, config=session_config()) as s:
            feed = {g.get_tensor_by_name(tensor_name(k)): v for k, v in feeds.items()}
            outs = s.run([g.get_tensor_by_name(tensor_name(f)) for f in fetches], feed)
    return [np.asarray(o) for o in outs]


def write_case(out_dir, graph_def, feeds, fetches, outputs, meta):
    """Write model.pb, the reference arrays and manifest.json into out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    fetches = list(fetches) + [o for o in outputs if o not in fetches]
    with open(os.path.join(out_dir, "model.pb"), "wb") as f:
        f.write(graph_def.SerializeToString(deterministic=True))
    values = run_graph_def(graph_def, feeds, fetches)
    manifest = dict(meta)
    manifest["inputs"] = []
    for i, (name, arr) in enumerate(feeds.items()):
        fn = f"input_{i}.npy"
        np.save(os.path.join(out_dir, fn), arr.astype(np.float32))
        manifest["inputs"].append({"name": name, "file": fn, "shape": list(arr.shape)})
    manifest["outputs"] = outputs
    manifest["tensors"] = []
    for i, (name, arr) in enumerate(zip(fetches, values)):
        fn = f"tensor_{i:02d}.npy"
        np.save(os.path.join(out_dir, fn), arr.astype(np.float32))
        manifest["tensors"].append({"name": name, "file": fn, "shape": list(arr.shape)})
    manifest["generator"] = {
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return values

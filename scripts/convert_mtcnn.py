#!/usr/bin/env python3
"""Rebuild MTCNN (PNet, RNet, ONet) from the weights PyPI mtcnn==1.0.0 (MIT)
ships, as frozen TensorFlow graphs with the same ops its Keras layers run
(conv + bias, PReLU as relu(x) - alpha * relu(-x), max pooling, permute,
flatten, dense, softmax), then convert them with faceall's own convert-tf
to Caffe files under converted/mtcnn/ (det1, det2, det3).

    .cache/venv/bin/python scripts/convert_mtcnn.py [--out converted/mtcnn] [--check]

Each converted net is checked layer by layer against TensorFlow running the
same graph (faceall verify-parity --reference tensorflow). `--check`
converts into a temporary directory and fails unless the files equal the
committed ones byte for byte (CI runs it).
"""
import argparse, glob, os, subprocess, sys, tempfile, zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL_DIR = os.path.join(ROOT, ".cache/models")


def weights():
    import joblib
    wheels = glob.glob(os.path.join(WHEEL_DIR, "mtcnn-1.0.0-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "mtcnn==1.0.0", "-d", WHEEL_DIR],
                       check=True)
        wheels = glob.glob(os.path.join(WHEEL_DIR, "mtcnn-1.0.0-*.whl"))
    out = {}
    with zipfile.ZipFile(wheels[0]) as z, tempfile.TemporaryDirectory() as d:
        for n in ("pnet", "rnet", "onet"):
            p = z.extract(f"mtcnn/assets/weights/{n}.lz4", d)
            out[n] = joblib.load(p)
    return out


def build(name, w, hw):
    import numpy as np
    import tensorflow as tf
    tf1 = tf.compat.v1
    it = iter(w)
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [1, hw[0], hw[1], 3], name="input")

        def conv(x, scope):
            k, b = next(it), next(it)
            y = tf.nn.conv2d(x, tf.constant(k), [1, 1, 1, 1], "VALID", name=scope + "/Conv2D")
            return tf.nn.bias_add(y, tf.constant(b), name=scope + "/BiasAdd")

        def prelu(x, scope):
            alpha = tf.constant(np.asarray(next(it)).reshape(-1).astype(np.float32))
            with tf.name_scope(scope):
                pos = tf.nn.relu(x)
                neg = -alpha * tf.nn.relu(-x)
                return tf.add(pos, neg, name="add")

        def dense(x, scope):
            k, b = next(it), next(it)
            return tf.nn.bias_add(tf.matmul(x, tf.constant(k)), tf.constant(b), name=scope)

        def pool(x, k, s, pad, scope):
            return tf.nn.max_pool2d(x, k, s, pad, name=scope)

        if name == "pnet":
            x1 = prelu(conv(x, "conv1"), "prelu1")
            x1 = pool(x1, 2, 2, "SAME", "pool1")
            x1 = prelu(conv(x1, "conv2"), "prelu2")
            x1 = prelu(conv(x1, "conv3"), "prelu3")
            reg = conv(x1, "conv4-2")
            tf.identity(reg, name="regression")
            tf.nn.softmax(conv(x1, "conv4-1"), name="prob")
            outs = ["regression", "prob"]
        else:
            x1 = prelu(conv(x, "conv1"), "prelu1")
            x1 = pool(x1, 3, 2, "SAME", "pool1")
            x1 = prelu(conv(x1, "conv2"), "prelu2")
            x1 = pool(x1, 3, 2, "VALID", "pool2")
            x1 = prelu(conv(x1, "conv3"), "prelu3")
            if name == "onet":
                x1 = pool(x1, 2, 2, "SAME", "pool3")
                x1 = prelu(conv(x1, "conv4"), "prelu4")
            x1 = tf.transpose(x1, [0, 2, 1, 3], name="permute")
            x1 = tf.reshape(x1, [1, -1], name="flatten")
            x1 = dense(x1, "fc1")
            alpha = tf.constant(np.asarray(next(it)).reshape(-1).astype(np.float32))
            with tf.name_scope("prelu_fc"):
                x1 = tf.add(tf.nn.relu(x1), -alpha * tf.nn.relu(-x1), name="add")
            reg = dense(x1, "regression")
            if name == "onet":
                tf.identity(dense(x1, "landmarks"), name="landmarks_out")
            tf.nn.softmax(dense(x1, "score"), name="prob")
            outs = ["regression", "prob"] + (["landmarks_out"] if name == "onet" else [])
    return g.as_graph_def(), outs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "converted/mtcnn"))
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--faceall", default=os.path.join(ROOT, "target/release/faceall"))
    a = ap.parse_args()
    w = weights()
    work = tempfile.mkdtemp()
    out = os.path.join(work, "out") if a.check else a.out
    os.makedirs(out, exist_ok=True)
    for net, det, hw in (("pnet", "det1", (12, 12)), ("rnet", "det2", (24, 24)), ("onet", "det3", (48, 48))):
        gd, outs = build(net, w[net], hw)
        pb = os.path.join(work, f"{det}.pb")
        open(pb, "wb").write(gd.SerializeToString())
        subprocess.run([a.faceall, "convert-tf", pb, "--to", "caffe", "--out-dir", out, "--name", det],
                       check=True, capture_output=True)
        v = subprocess.run([a.faceall, "verify-parity", "--tf", pb, "--caffe", os.path.join(out, f"{det}.prototxt"),
                            "--caffemodel", os.path.join(out, f"{det}.caffemodel"), "--reference", "tensorflow",
                            "--python", sys.executable], capture_output=True, text=True)
        if v.returncode != 0:
            sys.exit(f"{det}: converted net differs from TensorFlow:\n{v.stdout}{v.stderr}")
        print(f"{det} ({net}, outputs {outs}): converted, matches TensorFlow layer by layer")
    if a.check:
        bad = []
        for f in sorted(os.listdir(out)):
            mine, theirs = os.path.join(out, f), os.path.join(a.out, f)
            if not os.path.exists(theirs) or open(mine, "rb").read() != open(theirs, "rb").read():
                bad.append(f)
        if bad:
            sys.exit(f"converted/mtcnn is stale ({', '.join(bad)}): rerun scripts/convert_mtcnn.py")
        print("converted/mtcnn reproduces byte for byte")


if __name__ == "__main__":
    main()

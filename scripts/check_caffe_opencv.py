#!/usr/bin/env python3
"""Run a faceall-converted Caffe model in OpenCV 4.x's Caffe importer and
compare it with TensorFlow's reference values.

    check_caffe_opencv.py NET.prototxt NET.caffemodel REPORT.json CASE_DIR [--tolerance 1e-5]

REPORT.json is `faceall convert-tf --json` (its `blobs` map TF tensors to
Caffe blobs and their layout); CASE_DIR holds manifest.json + .npy written by
scripts/gen_fixtures.py or scripts/facenet_reference.py. Every reference
tensor that has a blob is compared; outputs must be within the tolerance.
Then each TF output is fetched as a user of OpenCV would, `net.forward(NAME)`
by its TF name, and compared raw, element for element, with TF's value (a
4-D output is NCHW, Caffe's convention; every other output in TF's own
element order): one {"raw_output": ...} line each.
Prints one JSON line per tensor and exits 1 if an output is off.
"""
import argparse
import json
import os
import sys

import cv2
import numpy as np


def to_tf(a, layout):
    if layout == "plain":
        return a
    if layout == "nchw":
        return a.transpose(0, 2, 3, 1)
    h, w, c = layout["flat_chw"]["h"], layout["flat_chw"]["w"], layout["flat_chw"]["c"]
    return a.reshape(a.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(a.shape[0], -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prototxt")
    ap.add_argument("caffemodel")
    ap.add_argument("report")
    ap.add_argument("case")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--relative", action="store_true",
                    help="outputs too are judged against tolerance x max(1, max|TF output|)")
    a = ap.parse_args()
    assert cv2.__version__.startswith("4."), f"OpenCV 4.x needed for the Caffe importer, found {cv2.__version__}"
    report = json.load(open(a.report))
    blobs = {b["tensor"]: b for b in report["blobs"]}
    man = json.load(open(os.path.join(a.case, "manifest.json")))
    net = cv2.dnn.readNetFromCaffe(a.prototxt, a.caffemodel)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    # Winograd 3x3 convolutions trade ~1e-5 of accuracy for speed; parity wants the direct path.
    net.enableWinograd(False)
    # Unfused, so every layer's own output can be fetched and compared.
    net.enableFusion(False)
    for inp in man["inputs"]:
        x = np.load(os.path.join(a.case, inp["file"])).astype(np.float32)
        b = blobs[inp["name"]]
        if b["layout"] == "nchw":
            x = x.transpose(0, 3, 1, 2)
        net.setInput(np.ascontiguousarray(x), b["blob"])
    wanted = [t for t in man["tensors"] if t["name"] in blobs and blobs[t["name"]]["layer"]]
    names = [blobs[t["name"]]["layer"] for t in wanted]
    outs = net.forward(names)
    bad = 0
    for t, out in zip(wanted, outs):
        ref = np.load(os.path.join(a.case, t["file"]))
        got = to_tf(np.asarray(out), blobs[t["name"]]["layout"]).reshape(ref.shape)
        err = float(np.abs(got - ref).max())
        scale = max(1.0, float(np.abs(ref).max()))
        is_output = t["name"] in man["outputs"]
        ok = err <= a.tolerance * scale if (a.relative or not is_output) else err <= a.tolerance
        if is_output and not ok:
            bad += 1
        print(json.dumps({"tensor": t["name"], "output": is_output, "max_abs": err, "ok": ok}))
    refs = {t["name"]: t for t in man["tensors"]}
    for o in man["outputs"]:
        ref = np.load(os.path.join(a.case, refs[o]["file"]))
        try:
            raw = np.asarray(net.forward(o))
        except cv2.error as e:
            print(json.dumps({"raw_output": o, "ok": False, "error": str(e).strip().splitlines()[-1]}))
            bad += 1
            continue
        # A 4-D output is channel-first (Caffe's convention) unless the
        # report says the blob holds TF's own order (an NCHW output).
        want = ref.transpose(0, 3, 1, 2) if ref.ndim == 4 and blobs[o]["layout"] == "nchw" else ref
        ok = raw.size == want.size
        err = float(np.abs(raw.reshape(-1) - want.reshape(-1)).max()) if ok else float("inf")
        ok = ok and err <= a.tolerance * (max(1.0, float(np.abs(ref).max())) if a.relative else 1.0)
        if not ok:
            bad += 1
        print(json.dumps({"raw_output": o, "shape": list(raw.shape), "tf_shape": list(ref.shape), "max_abs": err, "ok": ok}))
    missing = [o for o in man["outputs"] if o not in blobs]
    if missing:
        print(json.dumps({"error": f"outputs without a blob: {missing}"}))
        bad += 1
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

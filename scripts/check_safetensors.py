#!/usr/bin/env python3
"""Open a faceall bundle with the Python `safetensors` package and check its
weights against the converted caffemodel (read by OpenCV 4.x).

    check_safetensors.py NAME.graph.json NAME.prototxt NAME.caffemodel

For every Conv2d and MatMul node of the graph, its weights (TF layout, named
after the TF node) transposed to Caffe's layout must equal the Caffe layer's
blobs exactly, and its bias too. Prints a JSON summary; exits 1 on a mismatch.
"""
import json
import os
import sys

import cv2
import numpy as np
from safetensors import safe_open


def base(name):
    head, _, tail = name.rpartition(":")
    return head if tail.isdigit() else name


def main():
    gj_path, proto, model = sys.argv[1:4]
    gj = json.load(open(gj_path))
    weights = os.path.join(os.path.dirname(gj_path), gj["weights"])
    nodes = {n["name"]: n for n in gj["nodes"]}
    net = cv2.dnn.readNetFromCaffe(proto, model)
    checked, bad = 0, []
    with safe_open(weights, framework="numpy") as st:
        meta = st.metadata()
        assert meta["source_sha256"] == gj["source"]["sha256"], "bundle halves disagree"
        names = set(st.keys())
        for n in gj["nodes"]:
            op = n["op"]["op"]
            if op not in ("conv2d", "mat_mul"):
                continue
            # The Caffe layer is named after the TF tensor the node carries.
            if n.get("aliases"):
                layer = n["aliases"][-1]
            else:
                layer = f'{n["name"]}/folded' if n.get("own_changed") else n["name"]
            lid = net.getLayerId(layer)
            w = st.get_tensor(base(n["inputs"][1]))
            if op == "conv2d":
                if n["op"]["params"]["depthwise"]:
                    kh, kw, ci, m = w.shape
                    expect = w.transpose(2, 3, 0, 1).reshape(ci * m, 1, kh, kw)
                else:
                    expect = w.transpose(3, 2, 0, 1)
            else:
                tb = n["op"]["params"]["transpose_b"]
                w2 = w.T if not tb else w
                src = nodes[base(n["inputs"][0])]
                flat = nodes[base(src["inputs"][0])] if src["op"]["op"] == "reshape" else None
                shp = flat["outputs"][0]["shape"] if flat else None
                # A flatten of a channel-first value (an NHWC map transposed
                # to NCHW) reads Caffe's blob order already: no reordering.
                nchw = flat is not None and flat["op"]["op"] == "transpose" and flat["op"]["params"]["perm"] == [0, 3, 1, 2]
                if shp is not None and not nchw and len(shp) == 4 and shp[1] * shp[2] > 1:
                    h, wd, c = shp[1:]
                    w2 = w2.reshape(-1, h, wd, c).transpose(0, 3, 1, 2).reshape(w2.shape[0], -1)
                expect = w2
            got = net.getParam(lid, 0)
            if got.shape != expect.shape or not np.array_equal(got, expect):
                bad.append(f"{layer}: weights differ")
            if len(n["inputs"]) > 2:
                b = st.get_tensor(base(n["inputs"][2]))
                gb = net.getParam(lid, 1).reshape(-1)
                if not np.array_equal(gb, b):
                    bad.append(f"{layer}: bias differs")
            checked += 1
    print(json.dumps({"tensors": len(names), "layers_checked": checked, "mismatches": bad, "metadata": meta}))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Check a faceall-written .onnx with the ONNX project's own tools and run it
in onnxruntime against TensorFlow's values.

    check_onnx.py MODEL.onnx CASE_DIR [--tolerance 1e-5] [--layers]

1. `onnx.checker.check_model(path, full_check=True)` (type and shape
   inference included; by path, so external data is followed).
2. Prints one JSON line {"onnx": ...}: IR version, opsets, inputs and
   outputs (name, shape), op counts, whether weights are external.
3. Runs it in onnxruntime (CPU) on the case's inputs, fed as TensorFlow
   takes them (NHWC, TF names), and compares every declared output with the
   case's TensorFlow value; with --layers also every case tensor the model
   holds as a value (TFNAME, or TFNAME__nchw channel-first, transposed back).
   One JSON line per tensor: max_abs, where, ok (|diff| <= tol * max(1,
   max|ref|) per element). Exits 1 when an output is off or missing.
"""
import argparse
import json
import os
import sys
from collections import Counter

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("case")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--layers", action="store_true")
    a = ap.parse_args()

    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(a.model, full_check=True)
    m = onnx.load(a.model, load_external_data=False)

    def vi(v):
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "shape": dims}

    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    print(json.dumps({"onnx": {
        "ir_version": m.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        "producer": m.producer_name,
        "inputs": [vi(v) for v in m.graph.input],
        "outputs": [vi(v) for v in m.graph.output],
        "ops": dict(Counter(n.op_type for n in m.graph.node)),
        "nodes": len(m.graph.node),
        "external_data": external,
    }}))

    man = json.load(open(os.path.join(a.case, "manifest.json")))
    produced = {o for n in m.graph.node for o in n.output}
    declared = [o.name for o in m.graph.output]
    fetch = {}  # TF tensor -> (onnx value, channel-first?)
    for t in man["tensors"]:
        name = t["name"]
        if name in declared or (a.layers and name in produced):
            fetch[name] = (name, False)
        elif a.layers and name + "__nchw" in produced:
            fetch[name] = (name + "__nchw", True)
    if a.layers:
        full = onnx.load(a.model)
        for _, (value, _) in fetch.items():
            if value not in declared:
                full.graph.output.append(onnx.helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, None))
        sess = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    else:
        sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    feeds = {i["name"]: np.load(os.path.join(a.case, i["file"])).astype(np.float32) for i in man["inputs"]}
    names = list(fetch)
    outs = sess.run([fetch[n][0] for n in names], feeds)
    bad = 0
    for name, got in zip(names, outs):
        ref = np.load(os.path.join(a.case, next(t["file"] for t in man["tensors"] if t["name"] == name)))
        got = np.asarray(got)
        if fetch[name][1]:
            got = got.transpose(0, 2, 3, 1)
        is_output = name in man["outputs"]
        if got.shape != ref.shape:
            print(json.dumps({"tensor": name, "output": is_output, "error": f"shape {list(got.shape)} vs TensorFlow's {list(ref.shape)}", "ok": False}))
            bad += int(is_output)
            continue
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        where = [int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape)] if diff.size else []
        err = float(diff.max()) if diff.size else 0.0
        ok = err <= a.tolerance * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        bad += int(is_output and not ok)
        print(json.dumps({"tensor": name, "output": is_output, "value": fetch[name][0], "max_abs": err, "where": where, "ok": ok}))
    missing = [o for o in man["outputs"] if o not in fetch]
    if missing:
        print(json.dumps({"error": f"outputs not in the model: {missing}"}))
        bad += 1
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

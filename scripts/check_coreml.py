#!/usr/bin/env python3
"""Check a faceall-written .mlmodel with coremltools and run it independently.

    check_coreml.py MODEL.mlmodel REPORT.json CASE_DIR [--onnx] [--tolerance 1e-5]

1. coremltools loads it (`utils.load_spec` and `models.MLModel`); prints its
   specification version, inputs, outputs, metadata and layer counts as one
   JSON line {"coremltools": ...} for the caller to check.
2. With --onnx: converts it with onnxmltools.convert_coreml (after the import
   shims in coreml_onnx_shims.py) and runs it in onnxruntime on the case's
   inputs; every reference tensor with a blob in REPORT.json (`coreml_blobs`)
   is compared with TensorFlow's value, one JSON line each; then each
   declared output raw, element for element (4-D: (C, H, W) per sample),
   one {"raw_output": ...} line each. onnxmltools
   mis-converts l2normalize on non-(C,1,1) inputs, PReLU and adds with three
   or more inputs: faceall never writes the last two, and tensors computed
   after an l2normalize of a (C,H,W) blob are reported with "skipped".
   Exits 1 when an output is off.
"""
import argparse
import json
import os
import re
import sys
import warnings
from collections import Counter

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def summary(spec, mlmodel_ok):
    def feat(f):
        return {"name": f.name, "shape": list(f.type.multiArrayType.shape), "description": f.shortDescription}

    md = spec.description.metadata
    return {
        "specification_version": spec.specificationVersion,
        "inputs": [feat(f) for f in spec.description.input],
        "outputs": [feat(f) for f in spec.description.output],
        "metadata": {
            "short_description": md.shortDescription,
            "author": md.author,
            "version": md.versionString,
            "license": md.license,
            "user_defined": dict(md.userDefined),
        },
        "layers": dict(Counter(l.WhichOneof("layer") for l in spec.neuralNetwork.layers)),
        "layer_count": len(spec.neuralNetwork.layers),
        # linearUpsampleMode is specification 4; DEFAULT is the older meaning.
        "linear_upsample_modes": sorted({l.upsample.linearUpsampleMode for l in spec.neuralNetwork.layers
                                         if l.WhichOneof("layer") == "upsample" and l.upsample.linearUpsampleMode}),
        "mlmodel_loaded": mlmodel_ok,
    }


def to_tf_sample(a, blob):
    """An ONNX (N, C, H, W) result as TF's per-sample layout."""
    c, h, w = blob["chw"]
    lay = blob["layout"]
    a = a.reshape(a.shape[0], c, h, w)
    if lay == "chw":
        return a.transpose(0, 2, 3, 1)
    if lay == "same":
        return a.reshape(a.shape[0], -1)
    f = lay["flat_chw"]
    return a.reshape(a.shape[0], f["c"], f["h"], f["w"]).transpose(0, 2, 3, 1).reshape(a.shape[0], -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mlmodel")
    ap.add_argument("report")
    ap.add_argument("case")
    ap.add_argument("--onnx", action="store_true")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--relative", action="store_true",
                    help="outputs too are judged against tolerance x max(1, max|TF output|)")
    a = ap.parse_args()

    import coremltools as ct

    spec = ct.utils.load_spec(a.mlmodel)
    try:
        ct.models.MLModel(a.mlmodel)
        ok = True
    except Exception as e:  # noqa: BLE001
        ok = f"{type(e).__name__}: {e}"
    print(json.dumps({"coremltools": summary(spec, ok)}))
    if ok is not True:
        sys.exit(1)
    if not a.onnx:
        return

    import coreml_onnx_shims  # noqa: F401
    import onnx
    import onnxmltools
    import onnxruntime as ort

    report = json.load(open(a.report))
    blobs = {b["tensor"]: b for b in report["coreml_blobs"]}
    man = json.load(open(os.path.join(a.case, "manifest.json")))
    onx = onnxmltools.convert_coreml(spec, target_opset=13)
    known = {o.name for o in onx.graph.output}
    produced = {o for n in onx.graph.node for o in n.output}

    def onnx_name(blob):
        # onnxmltools renames variables to identifiers ('/' becomes '_'), and
        # a declared output that a layer also reads to NAME1 (dropping it
        # from the graph's outputs).
        if blob in produced or blob in known:
            return blob
        ident = re.sub(r"[^0-9A-Za-z_]", "_", blob)
        if ident not in produced and ident not in known:
            renamed = sorted(p for p in produced if re.fullmatch(re.escape(ident) + r"\d+", p))
            if renamed:
                return renamed[0]
        return ident

    wanted = [t for t in man["tensors"] if t["name"] in blobs and onnx_name(blobs[t["name"]]["blob"]) in produced]
    for t in wanted:
        name = onnx_name(blobs[t["name"]]["blob"])
        if name not in known:
            onx.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            known.add(name)
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for inp in man["inputs"]:
        x = np.load(os.path.join(a.case, inp["file"])).astype(np.float32)
        b = blobs[inp["name"]]
        if b["layout"] == "chw":
            x = x.transpose(0, 3, 1, 2)
        elif x.ndim == 4:
            # A channel-first input, fed as it is.
            x = x.reshape(x.shape[0], *b["chw"])
        else:
            x = x.reshape(x.shape[0], -1, 1, 1)
        oi = {i.name: i for i in sess.get_inputs()}[b["blob"]]
        if len(oi.shape) == 2:
            x = x.reshape(x.shape[0], -1)
        feeds[b["blob"]] = np.ascontiguousarray(x)
    names = [onnx_name(blobs[t["name"]]["blob"]) for t in wanted]
    outs = sess.run(names, feeds)
    bad = 0
    for t, out in zip(wanted, outs):
        ref = np.load(os.path.join(a.case, t["file"]))
        got = to_tf_sample(np.asarray(out), blobs[t["name"]]).reshape(ref.shape)
        err = float(np.abs(got - ref).max())
        is_output = t["name"] in man["outputs"]
        ok = err <= a.tolerance * (1.0 if is_output and not a.relative else max(1.0, float(np.abs(ref).max())))
        bad += int(is_output and not ok)
        print(json.dumps({"tensor": t["name"], "output": is_output, "max_abs": err, "ok": ok}))
    # The declared outputs as a user of the model reads them: each of the
    # model's outputs (TF's order) raw, element for element, against TF's
    # value (a 4-D output is (C, H, W) per sample, Core ML's convention).
    refs = {t["name"]: t for t in man["tensors"]}
    # Paired by name: the model names each output after its TF tensor.
    spelled = {re.sub(r"[^0-9A-Za-z_]", "_", o): o for o in man["outputs"]}
    pairs = []
    for f in spec.description.output:
        tf_name = f.name if f.name in man["outputs"] else spelled.get(re.sub(r"[^0-9A-Za-z_]", "_", f.name))
        if tf_name is None:
            print(json.dumps({"raw_output": f.name, "ok": False, "error": "not an output of the TF case"}))
            bad += 1
            continue
        pairs.append((tf_name, onnx_name(f.name)))
    for o in man["outputs"]:
        if o not in [p[0] for p in pairs]:
            print(json.dumps({"raw_output": o, "ok": False, "error": "the model declares no output for it"}))
            bad += 1
    for _, name in pairs:
        if name not in known:
            onx.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            known.add(name)
            sess = None
    if sess is None:
        sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    raw = sess.run([p[1] for p in pairs], feeds)
    for (o, name), got in zip(pairs, raw):
        ref = np.load(os.path.join(a.case, refs[o]["file"]))
        # A 4-D output is channel-first (Core ML's convention) unless the
        # report says the blob holds TF's own order (an NCHW output).
        want = ref.transpose(0, 3, 1, 2) if ref.ndim == 4 and blobs[o]["layout"] == "chw" else ref
        got = np.asarray(got)
        ok = got.size == want.size
        err = float(np.abs(got.reshape(-1) - want.reshape(-1)).max()) if ok else float("inf")
        ok = ok and err <= a.tolerance * (max(1.0, float(np.abs(ref).max())) if a.relative else 1.0)
        bad += int(not ok)
        print(json.dumps({"raw_output": o, "output": name, "shape": list(got.shape), "tf_shape": list(ref.shape), "max_abs": err, "ok": ok}))
    missing = [o for o in man["outputs"] if o not in [t["name"] for t in wanted]]
    if missing:
        print(json.dumps({"error": f"outputs not compared: {missing}"}))
        bad += 1
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

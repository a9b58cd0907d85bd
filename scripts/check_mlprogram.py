#!/usr/bin/env python3
"""Check a faceall-written ML Program (.mlpackage) with coremltools and run it
independently of faceall (no Core ML runtime exists off macOS).

    check_mlprogram.py MODEL.mlpackage CASE_DIR [--tolerance 1e-5] [--normalised]

1. coremltools loads the package (`utils.load_spec`,
   `models.MLModel(skip_model_load=True)`); one JSON line {"coremltools": ...}
   with the specification version, opset, inputs, outputs, metadata and
   operation counts.
2. coremltools' milproto loader reads the program back into MIL (its own
   type inference checks every operation), `mil_convert(...,
   convert_to="neuralnetwork")` translates it, and onnxmltools (with the
   project's shims) + onnxruntime run that on the case's inputs. A float16
   program's NeuralNetwork weights are widened to float32 first (onnxmltools
   reads float32 weights only): the route then computes in float32 with the
   program's float16 weights.
3. Every declared output is compared, raw, with TensorFlow's value as the
   user reads it: a 4-D output is the model's NCHW array transposed to NHWC,
   any other is the array reshaped to TF's shape (onnxmltools' reshapeStatic
   converter prepends a batch axis to rank-2 targets). One JSON line each;
   with --normalised the outputs are compared after L2 normalisation (fp16).
   Intermediate values whose operation names a TF tensor of the case are
   compared too (relative to their magnitude) and reported.
   Exits 1 when an output is off.
"""
import argparse
import collections
import json
import os
import re
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def widen_fp16(spec):
    """NeuralNetwork WeightParams in float16 -> float32 (exact widening)."""
    from google.protobuf.message import Message

    def walk(m):
        for f, v in m.ListFields():
            if f.message_type is None:
                continue
            items = v if f.is_repeated else [v]
            for x in items:
                if not isinstance(x, Message):
                    continue
                if x.DESCRIPTOR.name == "WeightParams" and len(x.float16Value) and not len(x.floatValue):
                    w = np.frombuffer(x.float16Value, dtype=np.float16).astype(np.float32)
                    x.ClearField("float16Value")
                    x.floatValue.extend(w.tolist())
                else:
                    walk(x)

    walk(spec)


def drop_identities(spec):
    """Remove NeuralNetwork identity layers (`linear` activations with alpha
    1, beta 0: what the translation makes of MIL's fp16/fp32 casts), whose
    inferred shapes onnxmltools gets wrong; their consumers read the input."""
    nn = spec.neuralNetwork
    outputs = {f.name for f in spec.description.output}
    keep = []
    rename = {}
    for l in nn.layers:
        for i, x in enumerate(l.input):
            l.input[i] = rename.get(x, x)
        act = l.activation if l.WhichOneof("layer") == "activation" else None
        if (act is not None and act.WhichOneof("NonlinearityType") == "linear"
                and act.linear.alpha == 1.0 and act.linear.beta == 0.0 and l.output[0] not in outputs):
            rename[l.output[0]] = l.input[0]
            continue
        keep.append(l)
    del nn.layers[:]
    nn.layers.extend(keep)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("package")
    ap.add_argument("case")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--relative", action="store_true",
                    help="outputs too are judged against tolerance x max(1, max|TF output|)")
    ap.add_argument("--normalised", action="store_true")
    a = ap.parse_args()

    import coremltools as ct
    from coremltools.converters.mil.converter import mil_convert
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    spec = ct.utils.load_spec(a.package)
    model = ct.models.MLModel(a.package, skip_model_load=True)
    func = spec.mlProgram.functions["main"]
    block = func.block_specializations[func.opset]
    md = spec.description.metadata
    summary = {
        "specification_version": spec.specificationVersion,
        "type": spec.WhichOneof("Type"),
        "opset": func.opset,
        "inputs": [{"name": f.name, "shape": list(f.type.multiArrayType.shape)} for f in spec.description.input],
        "outputs": [{"name": f.name, "shape": list(f.type.multiArrayType.shape)} for f in spec.description.output],
        "metadata": {
            "short_description": md.shortDescription,
            "author": md.author,
            "version": md.versionString,
            "license": md.license,
            "user_defined": dict(md.userDefined),
        },
        "operations": dict(collections.Counter(op.type for op in block.operations if op.type != "const")),
        "consts": sum(op.type == "const" for op in block.operations),
    }
    print(json.dumps({"coremltools": summary}))

    prog = milproto_load(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)
    nn = mil_convert(prog, convert_from="milinternal", convert_to="neuralnetwork",
                     compute_units=ct.ComputeUnit.CPU_ONLY)
    nspec = nn.get_spec()
    widen_fp16(nspec)
    drop_identities(nspec)
    layers = collections.Counter(l.WhichOneof("layer") for l in nspec.neuralNetwork.layers)
    print(json.dumps({"neuralnetwork": dict(layers)}))

    import coreml_onnx_shims  # noqa: F401
    import onnx
    import onnxmltools
    import onnxruntime as ort

    onx = onnxmltools.convert_coreml(nspec, target_opset=13)
    man = json.load(open(os.path.join(a.case, "manifest.json")))
    refs = {t["name"]: t for t in man["tensors"]}
    # Intermediate values: the NeuralNetwork blob of each MIL op is named
    # after its `name` attribute (TF's name + __nchw/__col), which onnxmltools
    # makes an identifier.
    produced = {o for n in onx.graph.node for o in n.output}
    known = {o.name for o in onx.graph.output}
    extra = []
    for op in block.operations:
        if op.type == "const" or "name" not in op.attributes:
            continue
        label = op.attributes["name"].immediateValue.tensor.strings.values[0]
        tf_name, nchw = label, False
        if label.endswith("__nchw"):
            tf_name, nchw = label[: -len("__nchw")], True
        elif label.endswith("__col"):
            tf_name = label[: -len("__col")]
        if tf_name not in refs or tf_name in man["outputs"]:
            continue
        onnx_name = re.sub(r"[^0-9A-Za-z_]", "_", label)
        for cand in (label, onnx_name, op.outputs[0].name):
            if cand in produced:
                if cand not in known:
                    onx.graph.output.append(onnx.helper.make_tensor_value_info(cand, onnx.TensorProto.FLOAT, None))
                    known.add(cand)
                extra.append((tf_name, cand, nchw))
                break
    # onnxmltools declares inputs with the NeuralNetwork rank-5 mapping's
    # shape; the program's inputs are exact rank-4 (or rank-2) arrays.
    for gi in onx.graph.input:
        f = next((f for f in spec.description.input if f.name == gi.name), None)
        if f is not None:
            dims = gi.type.tensor_type.shape.dim
            del dims[:]
            for d in f.type.multiArrayType.shape:
                dims.add().dim_value = int(d)
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    layouts = {k.split(".", 2)[-1] for k, v in md.userDefined.items() if k.startswith("faceall.input_layout.") and v == "NCHW"}
    feeds = {}
    for inp in man["inputs"]:
        x = np.load(os.path.join(a.case, inp["file"])).astype(np.float32)
        name = re.sub(r"[^0-9A-Za-z_]", "_", inp["name"])
        if name in layouts:
            x = x.transpose(0, 3, 1, 2)
        feeds[name] = np.ascontiguousarray(x)
    out_names = [f.name for f in spec.description.output]
    # onnxmltools renames a declared output that a layer also reads to
    # NAME1 and drops it from the graph's outputs: fetch it under that name.
    fetched = {}
    for name in out_names:
        if name not in known and name not in produced:
            renamed = sorted(p for p in produced if re.fullmatch(re.escape(name) + r"\d+", p))
            if renamed:
                fetched[name] = renamed[0]
                onx.graph.output.append(onnx.helper.make_tensor_value_info(renamed[0], onnx.TensorProto.FLOAT, None))
    if fetched:
        sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    fetch = [fetched.get(n, n) for n in out_names] + [c for _, c, _ in extra]
    got = dict(zip(fetch, sess.run(fetch, feeds)))
    got.update({n: got[f] for n, f in fetched.items()})
    bad = 0
    tf_outputs = {re.sub(r"[^0-9A-Za-z_]", "_", o): o for o in man["outputs"]}
    for name in out_names:
        tf_name = tf_outputs.get(name)
        if tf_name is None:
            print(json.dumps({"error": f"output {name} is not an output of the case"}))
            bad += 1
            continue
        ref = np.load(os.path.join(a.case, refs[tf_name]["file"]))
        y = np.asarray(got[name])
        # A 4-D output is channel-first unless its description says TF's
        # own order (an NCHW output of the TF graph).
        described = {f.name: f.shortDescription for f in spec.description.output}
        nchw = ref.ndim == 4 and "channel-first" in described.get(name, "")
        y = y.transpose(0, 2, 3, 1) if nchw else y.reshape(ref.shape)
        if a.normalised:
            def l2(v):
                return v / np.linalg.norm(v.reshape(v.shape[0], -1), axis=1).reshape(-1, *[1] * (v.ndim - 1))
            y, ref = l2(y), l2(ref)
        err = float(np.abs(y - ref).max())
        ok = bool(err <= a.tolerance * (max(1.0, float(np.abs(ref).max())) if a.relative else 1.0))
        bad += int(not ok)
        print(json.dumps({"tensor": tf_name, "output": True, "max_abs": err, "ok": ok}))
    for tf_name, cand, nchw in extra:
        ref = np.load(os.path.join(a.case, refs[tf_name]["file"]))
        y = np.asarray(got[cand])
        y = y.transpose(0, 2, 3, 1) if nchw else y.reshape(ref.shape)
        if y.shape != ref.shape:
            continue
        err = float(np.abs(y - ref).max())
        scale = max(1.0, float(np.abs(ref).max()))
        print(json.dumps({"tensor": tf_name, "output": False, "max_abs": err, "ok": bool(err <= a.tolerance * scale * (50 if a.normalised else 1))}))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

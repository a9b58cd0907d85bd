"""Import shims so onnxmltools 1.16 converts Core ML models with onnx 1.23.

onnxmltools' Core ML front end still imports names that its common package
and onnx dropped (upstream onnx/onnxmltools#735). Each shim restores one
name with its old meaning; import this module before onnxmltools.convert_coreml.
"""
import sys

import onnxmltools.convert.common.data_types as _dt


def _find_type_conversion(source_type, target_type):
    # Shim 1: removed from onnxmltools' common data types.
    if type(source_type) is type(target_type):
        return "identity"
    if type(target_type) is _dt.FloatTensorType:
        return "imageToFloatTensor"
    raise ValueError(f"unsupported type conversion {source_type} -> {target_type}")


if not hasattr(_dt, "find_type_conversion"):
    _dt.find_type_conversion = _find_type_conversion

# Shim 3: the shape calculators import two checks from common.utils, which
# moved to common.shape_calculator.
import onnxmltools.convert.common.utils as _utils  # noqa: E402
import onnxmltools.convert.common.shape_calculator as _sc  # noqa: E402

for _name in ("check_input_and_output_numbers", "check_input_and_output_types"):
    if not hasattr(_utils, _name):
        setattr(_utils, _name, getattr(_sc, _name))

# Shim 4: the converters import `onnx.onnx_proto`, which onnx 1.23 no longer
# exposes; it was the generated module with TensorProto and friends.
import onnx  # noqa: E402
import onnx.onnx_ml_pb2  # noqa: E402

if not hasattr(onnx, "onnx_proto"):
    onnx.onnx_proto = onnx.onnx_ml_pb2
    sys.modules.setdefault("onnx.onnx_proto", onnx.onnx_ml_pb2)

# Shim 2: the Core ML shape calculators and converters are no longer
# imported by the package, so nothing registers them; import them here.
import onnxmltools.convert.coreml.shape_calculators  # noqa: E402,F401
import onnxmltools.convert.coreml.shape_calculators.neural_network  # noqa: E402,F401
import onnxmltools.convert.coreml.operator_converters  # noqa: E402,F401
import onnxmltools.convert.coreml.operator_converters.neural_network  # noqa: E402,F401

# The shims below fix onnxmltools converters that the NeuralNetwork
# translation of an ML Program reaches (coremltools' mil_convert output) and
# that are wrong or missing in onnxmltools 1.16; each keeps Core ML's meaning.
import numpy as _np  # noqa: E402
from onnxmltools.convert.common import _registration as _reg  # noqa: E402
from onnxmltools.convert.common._apply_operation import apply_reshape as _apply_reshape  # noqa: E402
import onnxmltools.convert.coreml.operator_converters.neural_network.UnaryFunction as _unary  # noqa: E402

# Shim 5: unary `threshold` (relu6's translation) passes its bound as a
# Python float, which becomes a float64 Clip bound next to a float input.
_apply_clip = _unary.apply_clip


def _clip_f32(scope, input_name, output_name, container, operator_name=None, max=None, min=None):
    f = lambda v: None if v is None else _np.array(v, dtype=_np.float32)  # noqa: E731
    return _apply_clip(scope, input_name, output_name, container, operator_name=operator_name, max=f(max), min=f(min))


_unary.apply_clip = _clip_f32


# Shim 6: reshapeStatic with a rank-2 target prepends the batch axis
# ([N] + [N, K]); Core ML's targetShape is the whole shape.
def _reshape_static_shape(operator):
    operator.outputs[0].type.shape = [int(d) for d in operator.raw_operator.reshapeStatic.targetShape]


def _reshape_static(scope, operator, container):
    _apply_reshape(scope=scope, input_name=operator.inputs[0].full_name, output_name=operator.outputs[0].full_name,
                   container=container, operator_name=operator.full_name,
                   desired_shape=[int(d) for d in operator.raw_operator.reshapeStatic.targetShape])


# Shim 7: the broadcasting elementwise layers (what MIL's binary ops on
# two activations of different shapes translate to) have no converters;
# each is the ONNX op of the same name, which broadcasts as numpy does.
def _broadcast_shape(operator):
    # Unknown dimensions (onnxmltools writes 'None') broadcast as 1.
    dims = lambda s: tuple(int(d) if str(d).lstrip("-").isdigit() and int(d) > 0 else 1 for d in s)  # noqa: E731
    operator.outputs[0].type.shape = list(_np.broadcast_shapes(*[dims(i.type.shape) for i in operator.inputs]))


def _elementwise(onnx_op):
    def convert(scope, operator, container):
        container.add_node(onnx_op, operator.input_full_names, operator.output_full_names,
                           name=scope.get_unique_operator_name(onnx_op))
    return convert


_reg._shape_calculator_pool["reshapeStatic"] = _reshape_static_shape
_reg._converter_pool["reshapeStatic"] = _reshape_static
for _name, _op in (("addBroadcastable", "Add"), ("subtractBroadcastable", "Sub"),
                   ("multiplyBroadcastable", "Mul"), ("divideBroadcastable", "Div"),
                   ("maxBroadcastable", "Max"), ("minBroadcastable", "Min")):
    _reg._shape_calculator_pool[_name] = _broadcast_shape
    _reg._converter_pool[_name] = _elementwise(_op)


# Shim 8: the rank-N reductions (MIL reduce_sum / reduce_mean / reduce_max
# other than a global pool) have no converters; each is ONNX's reduction
# with the same axes and keepdims (opset 13: ReduceSum takes its axes as an
# input, the others as an attribute).
def _reduce_params(operator):
    kind = operator.type
    p = getattr(operator.raw_operator, kind)
    rank = len(operator.inputs[0].type.shape)
    axes = list(range(rank)) if p.reduceAll else [a % rank for a in p.axes]
    return p, axes


def _reduce_shape(operator):
    p, axes = _reduce_params(operator)
    s = list(operator.inputs[0].type.shape)
    operator.outputs[0].type.shape = [1 if i in axes else d for i, d in enumerate(s) if p.keepDims or i not in axes]


def _reduce(onnx_op):
    def convert(scope, operator, container):
        import onnx as _onnx

        p, axes = _reduce_params(operator)
        name = scope.get_unique_operator_name(onnx_op)
        if onnx_op == "ReduceSum":
            a = scope.get_unique_variable_name(name + "_axes")
            container.add_initializer(a, _onnx.TensorProto.INT64, [len(axes)], axes)
            container.add_node(onnx_op, [operator.input_full_names[0], a], operator.output_full_names,
                               name=name, keepdims=int(p.keepDims), op_version=13)
        else:
            container.add_node(onnx_op, operator.input_full_names, operator.output_full_names,
                               name=name, axes=axes, keepdims=int(p.keepDims))
    return convert


for _name, _op in (("reduceSum", "ReduceSum"), ("reduceMean", "ReduceMean"), ("reduceMax", "ReduceMax"),
                   ("reduceSumSquare", "ReduceSumSquare")):
    _reg._shape_calculator_pool[_name] = _reduce_shape
    _reg._converter_pool[_name] = _reduce(_op)


# Shim 9: Core ML's softmax layer normalises over the channel axis (-3 of
# C, H, W); onnxmltools writes ONNX Softmax without an axis, which since
# opset 13 means the last axis.
def _softmax(scope, operator, container):
    rank = len(operator.inputs[0].type.shape)
    container.add_node("Softmax", operator.input_full_names, operator.output_full_names,
                       name=operator.full_name, axis=rank - 3 if rank >= 3 else -1)


_reg._converter_pool["softmax"] = _softmax


# Shim 10: the rank-N `transpose` layer (MIL's transpose, e.g. an output
# put in TF's order) has no converter; it is ONNX's Transpose with the
# layer's axes as the permutation.
def _transpose_shape(operator):
    s = list(operator.inputs[0].type.shape)
    operator.outputs[0].type.shape = [s[int(a)] for a in operator.raw_operator.transpose.axes]


def _transpose(scope, operator, container):
    container.add_node("Transpose", operator.input_full_names, operator.output_full_names,
                       name=operator.full_name, perm=[int(a) for a in operator.raw_operator.transpose.axes])


_reg._shape_calculator_pool["transpose"] = _transpose_shape
_reg._converter_pool["transpose"] = _transpose


# Shim 11: the `padding` layer's shape calculator indexes a 4-D shape, but
# the NeuralNetwork translation of an ML Program can hand it a rank-3
# (C, H, W) one; Core ML pads the last two axes whatever the rank.
def _padding_shape(operator):
    p = operator.raw_operator.padding
    s = list(operator.inputs[0].type.shape)
    amounts = p.paddingAmounts.borderAmounts
    if len(s) >= 2 and len(amounts) == 2:
        for axis, b in ((-2, amounts[0]), (-1, amounts[1])):
            if isinstance(s[axis], int) and s[axis] > 0:
                s[axis] += b.startEdgeSize + b.endEdgeSize
    operator.outputs[0].type.shape = s


_reg._shape_calculator_pool["padding"] = _padding_shape


# Shim 12: the `gelu` layer (NeuralNetwork specification 4; MIL's gelu in
# the NeuralNetwork translation of an ML Program) has no converter; it is
# written out in ONNX opset 13 ops with Core ML's meaning: EXACT is
# 0.5 * x * (1 + erf(x / sqrt 2)), TANH_APPROXIMATION
# 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))).
def _gelu_shape(operator):
    operator.outputs[0].type.shape = list(operator.inputs[0].type.shape)


def _gelu(scope, operator, container):
    import onnx as _onnx

    mode = operator.raw_operator.gelu.mode
    x = operator.input_full_names[0]
    base = scope.get_unique_operator_name("gelu")

    def const(tag, v):
        n = scope.get_unique_variable_name(f"{base}_{tag}")
        container.add_initializer(n, _onnx.TensorProto.FLOAT, [], [v])
        return n

    def node(op, ins, tag, out=None):
        out = out or scope.get_unique_variable_name(f"{base}_{tag}")
        # Erf is opset 9; the others are as old as onnxmltools' default.
        extra = {"op_version": 9} if op == "Erf" else {}
        container.add_node(op, ins, [out], name=scope.get_unique_operator_name(f"{base}_{tag}"), **extra)
        return out

    if mode == 0:
        inner = node("Erf", [node("Mul", [x, const("k", 0.7071067811865476)], "arg")], "erf")
    elif mode == 1:
        cube = node("Mul", [node("Mul", [x, x], "sq"), x], "cube")
        poly = node("Add", [x, node("Mul", [cube, const("c", 0.044715)], "cterm")], "poly")
        inner = node("Tanh", [node("Mul", [poly, const("k", 0.7978845608028654)], "arg")], "tanh")
    else:
        raise ValueError("gelu SIGMOID_APPROXIMATION has no shim")
    half_x = node("Mul", [x, const("half", 0.5)], "half_x")
    one_plus = node("Add", [inner, const("one", 1.0)], "one_plus")
    node("Mul", [half_x, one_plus], "out", operator.output_full_names[0])


_reg._shape_calculator_pool["gelu"] = _gelu_shape
_reg._converter_pool["gelu"] = _gelu


# Shim 13: onnxmltools' `slice` converter gives the two axes it does not
# slice the bounds 0..-1, which in ONNX drops their last element, and maps
# Core ML's default endIndex -1 ("to the end") the same way. Here each
# unsliced axis runs to the end and a negative endIndex counts from one
# past the last element, as in Core ML.
def _slice(scope, operator, container):
    p = operator.raw_operator.slice
    if p.stride != 1:
        raise ValueError(f"slice stride {p.stride} has no shim")
    # Channel, height, width are the last three axes, counted from the end
    # (a rank-2 tensor of an ML Program's NeuralNetwork form is sliced on
    # its last axis as WIDTH).
    rank = len(operator.inputs[0].type.shape)
    axis = rank - 3 + p.axis
    if axis < 0:
        raise ValueError(f"slice axis {p.axis} of a rank-{rank} tensor has no shim")
    big = 2 ** 62
    end = p.endIndex + 1 if p.endIndex < 0 else p.endIndex
    end = big if end == 0 and p.endIndex < 0 else end
    _slice_nodes(scope, container, operator.input_full_names[0], operator.output_full_names[0],
                 [p.startIndex], [end], [axis], "slice")


_reg._converter_pool["slice"] = _slice


def _slice_nodes(scope, container, x, out, starts, ends, axes, tag):
    """ONNX Slice (opset 10 form, bounds as inputs) of x."""
    import onnx as _onnx

    base = scope.get_unique_operator_name(tag)
    names = []
    for t, v in (("starts", starts), ("ends", ends), ("axes", axes)):
        n = scope.get_unique_variable_name(f"{base}_{t}")
        container.add_initializer(n, _onnx.TensorProto.INT64, [len(v)], [int(i) for i in v])
        names.append(n)
    container.add_node("Slice", [x] + names, [out], name=base, op_version=10)


# Shim 14: the one-input `crop` layer goes through onnxconverter-common's
# crop helper, which writes `DynamicSlice`, an op onnxruntime no longer has;
# it is ONNX Slice over height and width.
def _crop(scope, operator, container):
    a = operator.raw_operator.crop.cropAmounts.borderAmounts
    if len(operator.input_full_names) != 1 or len(a) != 2:
        raise ValueError("crop: only the one-input form with two border amounts has a shim")
    big = 2 ** 62
    ends = [-a[0].endEdgeSize or big, -a[1].endEdgeSize or big]
    _slice_nodes(scope, container, operator.input_full_names[0], operator.output_full_names[0],
                 [a[0].startEdgeSize, a[1].startEdgeSize], ends, [-2, -1], "crop")


_reg._converter_pool["crop"] = _crop


# Shim 15: the rank-N `sliceStatic` layer (MIL's slice_by_index in the
# NeuralNetwork translation of an ML Program) has no converter or shape
# calculator; it is ONNX Slice with masked bounds taken whole.
def _slice_static_bounds(operator):
    p = operator.raw_operator.sliceStatic
    if any(p.squeezeMasks) or any(s != 1 for s in p.strides):
        raise ValueError("sliceStatic with squeeze masks or steps has no shim")
    shape = list(operator.inputs[0].type.shape)
    big = 2 ** 62
    starts, ends = [], []
    for i in range(len(p.beginIds)):
        starts.append(0 if p.beginMasks[i] else p.beginIds[i])
        ends.append(big if p.endMasks[i] else p.endIds[i])
    return shape, starts, ends


def _slice_static_shape(operator):
    shape, starts, ends = _slice_static_bounds(operator)
    out = []
    for i, d in enumerate(shape):
        if i >= len(starts) or not isinstance(d, int) or d <= 0:
            out.append(d)
            continue
        b = starts[i] + d if starts[i] < 0 else starts[i]
        e = ends[i] + d if ends[i] < 0 else min(ends[i], d)
        out.append(max(0, e - b))
    operator.outputs[0].type.shape = out


def _slice_static(scope, operator, container):
    _, starts, ends = _slice_static_bounds(operator)
    _slice_nodes(scope, container, operator.input_full_names[0], operator.output_full_names[0],
                 starts, ends, list(range(len(starts))), "slice_static")


_reg._shape_calculator_pool["sliceStatic"] = _slice_static_shape
_reg._converter_pool["sliceStatic"] = _slice_static


_reg._converter_pool["slice"] = _slice


# Shim 16: the `copy` layer (MIL's identity, e.g. an NCHW transpose of a
# map that is only a change of label) has no converter; it is ONNX's
# Identity, and its shape is its input's.
def _copy_shape(operator):
    operator.outputs[0].type.shape = list(operator.inputs[0].type.shape)


def _copy(scope, operator, container):
    container.add_node("Identity", operator.input_full_names, operator.output_full_names,
                       name=operator.full_name)


_reg._shape_calculator_pool["copy"] = _copy_shape
_reg._converter_pool["copy"] = _copy


# Shim 17: the rank-N `concatND` layer (MIL's concat on an axis other than
# channels, e.g. MirrorPad's mirrored rows) has no converter; it is ONNX's
# Concat on the layer's axis (negative counts from the end).
def _concat_nd_shape(operator):
    shapes = [list(i.type.shape) for i in operator.inputs]
    axis = int(operator.raw_operator.concatND.axis)
    axis = axis + len(shapes[0]) if axis < 0 else axis
    out = list(shapes[0])
    sizes = [s[axis] for s in shapes]
    out[axis] = sum(sizes) if all(isinstance(d, int) and d > 0 for d in sizes) else "None"
    operator.outputs[0].type.shape = out


def _concat_nd(scope, operator, container):
    container.add_node("Concat", operator.input_full_names, operator.output_full_names,
                       name=operator.full_name, axis=int(operator.raw_operator.concatND.axis))


_reg._shape_calculator_pool["concatND"] = _concat_nd_shape
_reg._converter_pool["concatND"] = _concat_nd


# Shim 18: onnxmltools' `upsample` converter drops linearUpsampleMode (so
# every bilinear upsample gets the asymmetric grid). Here it is ONNX's
# Resize with the grid Core ML's specification gives each mode: NN repeats
# each pixel, BILINEAR DEFAULT samples i * Xin / Xout, ALIGN_CORNERS_TRUE
# i * (Xin - 1) / (Xout - 1), ALIGN_CORNERS_FALSE (i + 0.5) * Xin / Xout - 0.5,
# all clamped to [0, Xin - 1].
def _upsample(scope, operator, container):
    import onnx as _onnx

    p = operator.raw_operator.upsample
    if len(p.fractionalScalingFactor):
        raise ValueError("upsample with fractional scaling factors has no shim")
    f = [int(v) for v in p.scalingFactor] or [1, 1]
    rank = len(operator.inputs[0].type.shape)
    base = scope.get_unique_operator_name("upsample")
    scales = scope.get_unique_variable_name(f"{base}_scales")
    container.add_initializer(scales, _onnx.TensorProto.FLOAT, [rank],
                              [1.0] * (rank - 2) + [float(f[0]), float(f[1])])
    if p.mode == 0:
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}
    else:
        grid = {0: "asymmetric", 1: "align_corners", 2: "half_pixel"}[p.linearUpsampleMode]
        attrs = {"mode": "linear", "coordinate_transformation_mode": grid}
    container.add_node("Resize", [operator.input_full_names[0], "", scales], operator.output_full_names,
                       name=base, op_version=13, **attrs)


_reg._converter_pool["upsample"] = _upsample


# Shim 19: the `resizeBilinear` layer (specification 3) has no converter.
# It is ONNX's Resize to the target size on the layer's grid:
# UPSAMPLE_MODE is linspace(0, X - X/N) (ONNX's asymmetric),
# STRICT_ALIGN_ENDPOINTS_MODE linspace(0, X - 1) (align_corners), and
# ALIGN_ENDPOINTS_MODE the same unless N is 1.
def _resize_bilinear_shape(operator):
    s = list(operator.inputs[0].type.shape)
    t = [int(v) for v in operator.raw_operator.resizeBilinear.targetSize] or [1, 1]
    operator.outputs[0].type.shape = s[:-2] + t


def _resize_bilinear(scope, operator, container):
    import onnx as _onnx

    p = operator.raw_operator.resizeBilinear
    t = [int(v) for v in p.targetSize] or [1, 1]
    method = p.mode.samplingMethod
    if method == 0 or (method == 1 and min(t) > 1):
        grid = "align_corners"
    elif method == 2:
        grid = "asymmetric"
    else:
        raise ValueError(f"resizeBilinear sampling mode {method} with target {t} has no shim")
    # The sizes: the input's leading dimensions (the batch is unknown
    # here), then the target.
    x = operator.input_full_names[0]
    base = scope.get_unique_operator_name("resize_bilinear")

    def name(tag):
        return scope.get_unique_variable_name(f"{base}_{tag}")

    def ints(tag, v):
        n = name(tag)
        container.add_initializer(n, _onnx.TensorProto.INT64, [len(v)], v)
        return n

    shape, lead, sizes = name("shape"), name("lead"), name("sizes")
    container.add_node("Shape", [x], [shape], name=f"{base}_shape", op_version=13)
    container.add_node("Slice", [shape, ints("start", [0]), ints("end", [-2])], [lead],
                       name=f"{base}_lead", op_version=13)
    container.add_node("Concat", [lead, ints("target", t)], [sizes], name=f"{base}_sizes", axis=0,
                       op_version=13)
    container.add_node("Resize", [x, "", "", sizes], operator.output_full_names,
                       name=base, op_version=13, mode="linear", coordinate_transformation_mode=grid)


_reg._shape_calculator_pool["resizeBilinear"] = _resize_bilinear_shape
_reg._converter_pool["resizeBilinear"] = _resize_bilinear


# Shim 20: the channel `concat` shape calculator raises when the inputs'
# other dimensions differ, but in the NeuralNetwork translation of an ML
# Program onnxmltools only guesses them (an input (1, 3, 8, 6) becomes
# [None, 1, 1, 1], a resized map [None, 8, 0, 0]). Guesses that disagree are
# left unknown; onnxruntime checks the real shapes when it runs the Concat.
def _concat_shape(operator):
    shapes = [list(i.type.shape) for i in operator.inputs]
    out = list(shapes[0])
    for axis in range(len(out)):
        if axis == 1:
            dims = [s[1] for s in shapes]
            out[1] = sum(dims) if all(isinstance(d, int) and d > 0 for d in dims) else "None"
        elif any(s[axis] != out[axis] for s in shapes):
            out[axis] = "None"
    operator.outputs[0].type.shape = out


_reg._shape_calculator_pool["concat"] = _concat_shape


# Shim 21: the NeuralNetwork translation of an ML Program's conv_transpose
# states both the output shape and valid padding amounts (MIL's pads, the
# rows cropped from each edge of the full scatter). onnxmltools writes both
# into ConvTranspose, where output_shape wins and onnxruntime places the odd
# row at the start, away from where the pads put it. Given the amounts,
# the output shape is theirs: it is dropped and the pads kept.
_convolution = _reg._converter_pool["convolution"]


def _convolution_pads_first(scope, operator, container):
    import copy as _copy

    layer = operator.raw_operator
    p = layer.convolution
    if p.isDeconvolution and len(p.outputShape) and p.WhichOneof("ConvolutionPaddingType") == "valid":
        trimmed = _copy.deepcopy(layer)
        trimmed.convolution.ClearField("outputShape")
        operator.raw_operator = trimmed
        try:
            return _convolution(scope, operator, container)
        finally:
            operator.raw_operator = layer
    return _convolution(scope, operator, container)


_reg._converter_pool["convolution"] = _convolution_pads_first


# Shim 22: the `reorganizeData` shape calculator raises when height and
# width are not multiples of the block, which the guessed shapes of the
# NeuralNetwork translation of an ML Program are not (see shim 20). The
# output shape follows from the known dimensions; the others stay unknown,
# and onnxruntime checks the real ones when it runs DepthToSpace.
def _reorganize_shape(operator):
    p = operator.raw_operator.reorganizeData
    b = int(p.blockSize)
    s = list(operator.inputs[0].type.shape)
    known = [isinstance(d, int) and d > 0 for d in s]
    out = list(s)
    if p.mode == 0:  # SPACE_TO_DEPTH
        out[-3] = s[-3] * b * b if known[-3] else "None"
        for axis in (-2, -1):
            out[axis] = s[axis] // b if known[axis] and s[axis] % b == 0 else "None"
    else:  # DEPTH_TO_SPACE, PIXEL_SHUFFLE
        out[-3] = s[-3] // (b * b) if known[-3] and s[-3] % (b * b) == 0 else "None"
        for axis in (-2, -1):
            out[axis] = s[axis] * b if known[axis] else "None"
    operator.outputs[0].type.shape = out


_reg._shape_calculator_pool["reorganizeData"] = _reorganize_shape

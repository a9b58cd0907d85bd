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

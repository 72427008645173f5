"""A run's model as an ONNX graph, for ONNX Runtime on servers, phones and browsers.

``to_onnx(model)`` writes the graph of a ``ser.numpy_runtime.NumpyModel`` (dense models,
seed ensembles of them, LSTMs: what the NumPy runtime can run) with the same arithmetic:
Dense as MatMul + Add (each BatchNormalization already folded in), ReLU, Softmax, an
ensemble's average as Mean, and Keras's LSTM as ONNX's LSTM operator with its gates
reordered (Keras i, f, c, o; ONNX i, o, f, c). Input ``features``: float32 ``[batch, D]``
or ``[batch, frames, D]`` (free batch and frame axes), normalised as ``normaliser.json``
says; output ``probabilities`` ``[batch, classes]``.

Padding: an LSTM's sequence lengths are counted from the frames that are not all zeros,
which equals Keras's masking when the zero frames are the padding at the end (as
``ser`` pads). Keras also skips an all-zero frame inside a clip, which ONNX's LSTM does
not; z-scored features are never exactly zero in all dimensions, so real clips agree.
``ser export RUN --format onnx`` checks every export against the run's own model.
"""

from __future__ import annotations

import numpy as np

from ser.numpy_runtime import (
    Activation,
    Affine,
    AnyOf,
    Graph,
    Identity,
    LSTMLayer,
    Mean,
    NotEqual,
    NumpyModel,
    Scale,
)

OPSET = 17
INPUT, OUTPUT = "features", "probabilities"


class UnsupportedForONNX(ValueError):
    """The model holds a step this exporter cannot write."""


class _Writer:
    """Collects nodes and initialisers under unique names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.weights: list = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, array: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, kind: str, inputs: list[str], hint: str, outputs: int = 1, **attrs) -> list[str]:
        from onnx import helper

        names = [self.name(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(kind, inputs, names, **attrs))
        return names


def _keras_gates_to_onnx(matrix: np.ndarray, units: int) -> np.ndarray:
    """[..., 4H] in Keras's gate order (i, f, c, o) -> ONNX's order (i, o, f, c)."""
    i, f, c, o = (matrix[..., k * units : (k + 1) * units] for k in range(4))
    return np.concatenate([i, o, f, c], axis=-1)


def _lstm(w: _Writer, lstm: LSTMLayer, x: str, mask: str | None) -> str:
    from onnx import TensorProto

    units = lstm.recurrent.shape[0]
    kernel = _keras_gates_to_onnx(lstm.kernel, units).T[None]  # [1, 4H, D]
    recurrent = _keras_gates_to_onnx(lstm.recurrent, units).T[None]  # [1, 4H, H]
    bias = np.concatenate([_keras_gates_to_onnx(lstm.bias, units), np.zeros(4 * units)])
    inputs = [
        w.op("Transpose", [x], "time_major", perm=[1, 0, 2])[0],
        w.constant(kernel.astype(np.float32), "lstm_W"),
        w.constant(recurrent.astype(np.float32), "lstm_R"),
        w.constant(bias[None].astype(np.float32), "lstm_B"),
    ]
    if mask is not None:  # real frames per sequence: the padding is at the end
        axes = w.constant(np.array([1], np.int64), "axes")
        count = w.op("ReduceSum", [mask, axes], "frames", keepdims=0)[0]
        inputs.append(w.op("Cast", [count], "lengths", to=TensorProto.INT32)[0])
    y, y_h = w.op("LSTM", inputs, "lstm", outputs=2, hidden_size=units)
    if not lstm.return_sequences:
        return w.op("Squeeze", [y_h, w.constant(np.array([0], np.int64), "axes")], "h")[0]
    squeezed = w.op("Squeeze", [y, w.constant(np.array([1], np.int64), "axes")], "seq")[0]
    return w.op("Transpose", [squeezed], "batch_major", perm=[1, 0, 2])[0]


def _step(w: _Writer, fn, args: list[str], mask: str | None) -> str:
    from onnx import TensorProto

    if isinstance(fn, Affine):
        y = w.op("MatMul", [args[0], w.constant(fn.weight, "W")], "matmul")[0]
        y = w.op("Add", [y, w.constant(fn.bias, "b")], "dense")[0]
        return _step(w, Activation(fn.activation), [y], None)
    if isinstance(fn, Scale):
        y = w.op("Mul", [args[0], w.constant(fn.scale, "scale")], "scaled")[0]
        return w.op("Add", [y, w.constant(fn.shift, "shift")], "shifted")[0]
    if isinstance(fn, Activation):
        if fn.name == "relu":
            return w.op("Relu", args, "relu")[0]
        if fn.name == "softmax":
            return w.op("Softmax", args, "softmax", axis=-1)[0]
        return args[0]  # linear
    if isinstance(fn, Identity):
        return args[0]
    if isinstance(fn, Mean):
        return w.op("Mean", args, "mean")[0]
    if isinstance(fn, NotEqual):
        value = w.constant(np.array(fn.value, np.float32), "value")
        equal = w.op("Equal", [args[0], value], "equal")[0]
        return w.op("Not", [equal], "not_equal")[0]
    if isinstance(fn, AnyOf):  # as float 0/1, so the LSTM can count real frames
        as_float = w.op("Cast", args, "as_float", to=TensorProto.FLOAT)[0]
        axis = -1 if fn.axis is None else fn.axis
        return w.op("ReduceMax", [as_float], "any", axes=[axis], keepdims=int(fn.keepdims))[0]
    if isinstance(fn, LSTMLayer):
        return _lstm(w, fn, args[0], mask)
    if isinstance(fn, Graph):
        return _graph(w, fn, args[0])
    raise UnsupportedForONNX(f"no ONNX form for {type(fn).__name__}")


def _graph(w: _Writer, graph: Graph, x: str) -> str:
    values = {graph.inputs[0]: x}
    for step in graph.steps:
        args = [values[i] for i in step.inputs]
        values[step.name] = _step(w, step.fn, args, values[step.mask] if step.mask else None)
    return values[graph.outputs[0]]


def to_onnx(model: NumpyModel, labels: list[str], name: str = "ser"):
    """The ``onnx.ModelProto`` of ``model`` (see the module docstring)."""
    from onnx import TensorProto, checker, helper

    w = _Writer()
    output = _graph(w, model.graph, INPUT)
    w.nodes.append(helper.make_node("Identity", [output], [OUTPUT]))
    shape = ["batch", "frames", model.input_dim] if model.sequence else ["batch", model.input_dim]
    graph = helper.make_graph(
        w.nodes,
        name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", len(labels)])],
        w.weights,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ser"
    )
    proto.ir_version = 8  # readable by every ONNX Runtime since 1.10
    helper.set_model_props(proto, {"labels": ",".join(labels)})
    checker.check_model(proto)
    return proto


class OnnxModel:
    """A model converted with ``to_onnx`` and run on ONNX Runtime (one thread), with the
    interface of ``NumpyModel``: float32 [B, D] or [B, T, D] -> [B, C]."""

    def __init__(self, model: NumpyModel, labels: list[str]) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            to_onnx(model, labels).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.input_dim = model.input_dim
        self.sequence = model.sequence
        self.parameters = model.parameters

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {INPUT: np.asarray(x, np.float32)})[0]

    def count_params(self) -> int:
        return self.parameters

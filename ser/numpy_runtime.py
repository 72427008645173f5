"""Run a saved feed-forward model with NumPy alone: no TensorFlow import, no compilation.

``load_numpy_model(path)`` reads a ``model.keras`` archive (its ``config.json`` graph
and ``model.weights.h5`` weights) and returns a ``NumpyModel`` when every layer is one
it can run exactly: ``InputLayer``, ``Dense`` (linear, relu or softmax), ``BatchNormalization``
over the last axis, ``ReLU``, ``Dropout`` and ``GaussianNoise`` (identities at inference),
``Average`` and nested functional models (the members of a seed ensemble), all float32.
That is every dense model and dense ensemble this project trains. Anything else (an
LSTM, a convolution, mixed precision) gives ``None``, and the caller uses Keras.

Why: ``import tensorflow`` alone costs about 6 s of a command's start, and a Keras call
costs about 1 ms of fixed overhead, against about 0.3 ms for the few matrix products of
a dense model. Each BatchNormalization is folded into the Dense before it (exact algebra;
float32 rounding differs from Keras's by about 1e-7). ``tests/test_numpy_runtime.py``
checks the probabilities equal Keras's within 1e-5 for a dense model and an ensemble.

The graph's steps (``Graph``, ``Step`` and the layer classes) are public:
``ser.onnx_export`` writes the same graph as ONNX.

Weights are found the way Keras 3 stores them: under each container, a layer's
variables live at ``layers/<snake_case(class name)>[_<k>]/vars/<i>``, where ``k``
counts earlier layers of the same class in that container. Shapes are checked against
the config, so a layout this module does not know fails loudly, never silently.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IDENTITY_LAYERS = {"Dropout", "GaussianNoise", "SpatialDropout1D", "ActivityRegularization"}
ACTIVATIONS = {"linear", "relu", "softmax"}


class UnsupportedModel(ValueError):
    """The model holds something ``NumpyModel`` cannot run exactly (Keras runs it)."""


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(x, 0)
    if activation == "softmax":
        return _softmax(x)
    return x


def _snake_case(name: str) -> str:
    """Keras's ``naming.to_snake_case``: the variable-group name of a layer class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


@dataclass
class Scale:
    """y = x * scale + shift per feature: a BatchNormalization at inference."""

    scale: np.ndarray
    shift: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale + self.shift


@dataclass
class Affine:
    """y = activation(x @ weight + bias): a Dense, with a BatchNormalization folded in."""

    weight: np.ndarray
    bias: np.ndarray
    activation: str = "linear"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _activate(x @ self.weight + self.bias, self.activation)


def _tensor_name(value: Any) -> str | None:
    """The producing layer's name of a serialised Keras tensor, else None."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        return value["config"]["keras_history"][0]
    return None


def _inputs_of(layer: dict[str, Any]) -> tuple[list[str], list[Any], str | None]:
    """What feeds ``layer`` (called once): the producing layers' names, the constant
    arguments (``x != 0.0``'s 0.0) and the layer producing its ``mask`` argument, if any."""
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) != 1:
        raise UnsupportedModel(f"layer {layer.get('name')!r} is called {len(nodes)} times")
    node = nodes[0]
    # ``training`` does not matter at inference; a mask is passed on; nothing else may come.
    kwargs = {k: v for k, v in (node.get("kwargs") or {}).items() if k != "training"}
    mask = _tensor_name(kwargs.pop("mask", None))
    if any(value is not None for value in kwargs.values()):
        raise UnsupportedModel(f"layer {layer.get('name')!r} is called with {node['kwargs']}")
    args = node["args"]
    values = args[0] if len(args) == 1 and isinstance(args[0], list) else args
    names = [n for n in map(_tensor_name, values) if n is not None]
    constants = [v for v in values if _tensor_name(v) is None]
    if not names or any(isinstance(v, dict) for v in constants):
        raise UnsupportedModel(f"layer {layer.get('name')!r} has an input it cannot read")
    return names, constants, mask


def _dtype_is_float32(config: dict[str, Any]) -> bool:
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name")
    return dtype in (None, "float32")


@dataclass
class Step:
    """One layer of a graph: its name, the layers feeding it, its function, and the layer
    producing the mask it is called with (None: no mask)."""

    name: str
    inputs: list[str]
    fn: Callable[..., np.ndarray]
    mask: str | None = None


@dataclass
class Activation:
    """An elementwise activation (or softmax over the last axis): ReLU, Activation."""

    name: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _activate(x, self.name)


class Identity:
    """Dropout, noise and Masking at inference: the input unchanged."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x


class Mean:
    """Average: the elementwise mean of its inputs (an ensemble's probabilities)."""

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        return sum(xs[1:], xs[0]) / np.float32(len(xs))


@dataclass
class NotEqual:
    """The traced ``x != value`` of a Masking layer: which entries are not padding."""

    value: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x != self.value


@dataclass
class AnyOf:
    """The traced ``any(..., axis)`` of a Masking layer: which frames are real."""

    axis: int | None
    keepdims: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.any(x, axis=self.axis, keepdims=self.keepdims)


# ``keras.ops`` calls traced into a functional model (``Masking`` records its mask as
# ``any(x != mask_value, axis=-1)``), by class name -> (config, constants) -> function.
OPERATIONS: dict[str, Callable[..., Callable[..., np.ndarray]]] = {
    "NotEqual": lambda cfg, value: NotEqual(value),
    "Any": lambda cfg: AnyOf(cfg.get("axis"), bool(cfg.get("keepdims"))),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class LSTMLayer:
    """Keras's ``LSTM`` (tanh, sigmoid gates in the order i, f, c, o) at inference.

    Masked frames (all-zero padding) leave the state unchanged and repeat the previous
    output, as Keras's masked LSTM does; without ``return_sequences`` the output is the
    state after each sequence's last real frame. One matrix product per frame.
    """

    kernel: np.ndarray  # [D, 4H]
    recurrent: np.ndarray  # [H, 4H]
    bias: np.ndarray  # [4H]
    return_sequences: bool

    @classmethod
    def from_config(cls, cfg: dict[str, Any], variables: list[np.ndarray]) -> LSTMLayer:
        plain = (
            cfg["activation"] == "tanh"
            and cfg["recurrent_activation"] == "sigmoid"
            and not cfg.get("go_backwards")
            and not cfg.get("return_state")
            and not cfg.get("stateful")
            and not cfg.get("zero_output_for_mask")
        )
        if not plain:
            raise UnsupportedModel(f"LSTM {cfg['name']!r} with settings this runtime lacks")
        units = cfg["units"]
        bias = variables[2] if cfg["use_bias"] else np.zeros(4 * units, np.float32)
        if variables[1].shape != (units, 4 * units):
            raise UnsupportedModel(f"LSTM {cfg['name']!r}: recurrent kernel {variables[1].shape}")
        return cls(variables[0], variables[1], bias, bool(cfg["return_sequences"]))

    def __call__(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        batch, frames, _ = x.shape
        units = self.recurrent.shape[0]
        inputs = x @ self.kernel + self.bias  # every frame's input part at once
        h = np.zeros((batch, units), np.float32)
        c = np.zeros((batch, units), np.float32)
        outputs = np.zeros((batch, frames, units), np.float32) if self.return_sequences else None
        for t in range(frames):
            z = inputs[:, t] + h @ self.recurrent
            i, f = _sigmoid(z[:, :units]), _sigmoid(z[:, units : 2 * units])
            new_c = f * c + i * np.tanh(z[:, 2 * units : 3 * units])
            new_h = _sigmoid(z[:, 3 * units :]) * np.tanh(new_c)
            if mask is None:
                h, c = new_h, new_c
            else:
                keep = mask[:, t, None]
                h, c = np.where(keep, new_h, h), np.where(keep, new_c, c)
            if outputs is not None:
                outputs[:, t] = h
        return outputs if outputs is not None else h


def _layer_names(entries: list[Any]) -> list[str]:
    """Layer names of a config's ``input_layers``/``output_layers``: one ``[name, node,
    tensor]`` entry, or a list of them."""
    return [entries[0]] if entries and isinstance(entries[0], str) else [e[0] for e in entries]


class Graph:
    """One functional model's layers, run in config order on named intermediate outputs."""

    def __init__(self, config: dict[str, Any], weights: Any) -> None:
        self.steps: list[Step] = []
        self.inputs = _layer_names(config["input_layers"])
        self.outputs = _layer_names(config["output_layers"])
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise UnsupportedModel("only models with one input and one output are supported")
        seen: dict[str, int] = {}
        for layer in config["layers"]:
            kind = layer["class_name"]
            if kind in OPERATIONS:  # traced ``keras.ops`` calls: no weights, no variables slot
                inputs, constants, mask = _inputs_of(layer)
                op = OPERATIONS[kind](layer["config"], *constants)
                self.steps.append(Step(layer["name"], inputs, op, mask))
                continue
            group = _snake_case(kind)
            k = seen.get(group, 0)
            seen[group] = k + 1
            slot = weights["layers"][group if k == 0 else f"{group}_{k}"]
            if kind == "InputLayer":
                continue
            inputs, constants, mask = _inputs_of(layer)
            if constants:
                raise UnsupportedModel(f"layer {layer['name']!r} takes constant arguments")
            self.steps.append(Step(layer["name"], inputs, self._build(layer, slot), mask))
        self._fold_batch_norms()

    def _build(self, layer: dict[str, Any], slot: Any) -> Callable[..., np.ndarray]:
        kind, cfg = layer["class_name"], layer["config"]
        if kind not in ("Functional", "Model") and not _dtype_is_float32(cfg):
            raise UnsupportedModel(f"layer {cfg.get('name')!r} is not float32")
        holder = slot.get("cell", slot)  # a recurrent layer keeps its variables in its cell
        variables = [
            np.asarray(holder["vars"][str(i)], np.float32) for i in range(len(holder["vars"]))
        ]
        if kind == "Dense":
            if cfg["activation"] not in ACTIVATIONS:
                raise UnsupportedModel(f"Dense activation {cfg['activation']!r}")
            weight = variables[0]
            if weight.shape[1] != cfg["units"]:
                raise UnsupportedModel(f"Dense {cfg['name']!r}: weights {weight.shape}")
            bias = variables[1] if cfg["use_bias"] else np.zeros(cfg["units"], np.float32)
            return Affine(weight, bias, cfg["activation"])
        if kind == "BatchNormalization":
            axis = cfg["axis"]
            if axis not in (-1, [-1]):
                raise UnsupportedModel(f"BatchNormalization over axis {axis}")
            names = [n for n, on in (("gamma", cfg["scale"]), ("beta", cfg["center"])) if on]
            values = dict(zip([*names, "mean", "variance"], variables))
            size = values["mean"].shape[0]
            scale = values.get("gamma", np.ones(size, np.float32)) / np.sqrt(
                values["variance"] + np.float32(cfg["epsilon"])
            )
            shift = values.get("beta", np.zeros(size, np.float32)) - values["mean"] * scale
            return Scale(scale.astype(np.float32), shift.astype(np.float32))
        if kind == "ReLU":
            if cfg.get("max_value") is not None or cfg.get("negative_slope", 0.0) != 0.0:
                raise UnsupportedModel("ReLU with a cap or a slope")
            return Activation("relu")
        if kind == "Activation" and cfg["activation"] in ACTIVATIONS:
            return Activation(cfg["activation"])
        if kind in IDENTITY_LAYERS:
            return Identity()
        if kind == "Masking":  # the mask itself comes from the traced ``x != value`` ops
            return Identity()
        if kind == "LSTM":
            return LSTMLayer.from_config(cfg, variables)
        if kind == "Average":
            return Mean()
        if kind in ("Functional", "Model"):
            return Graph(cfg, slot)
        raise UnsupportedModel(f"layer type {kind}")

    def _fold_batch_norms(self) -> None:
        """A linear Dense whose only consumer is a BatchNormalization -> one affine map."""
        users: dict[str, int] = {}
        for step in self.steps:
            for name in [*step.inputs, *([step.mask] if step.mask else [])]:
                users[name] = users.get(name, 0) + 1
        kept: list[Step] = []
        for step in self.steps:
            fn = step.fn
            if isinstance(fn, Scale) and kept and step.inputs == [kept[-1].name]:
                before = kept[-1]
                dense = before.fn
                if (
                    isinstance(dense, Affine)
                    and dense.activation == "linear"
                    and users[before.name] == 1
                ):
                    folded = Affine(dense.weight * fn.scale, dense.bias * fn.scale + fn.shift)
                    kept[-1] = Step(step.name, before.inputs, folded, before.mask)
                    continue
            kept.append(step)
        self.steps = kept

    def __call__(self, x: np.ndarray) -> np.ndarray:
        values = {self.inputs[0]: x}
        for step in self.steps:
            args = [values[i] for i in step.inputs]
            if step.mask is None:
                values[step.name] = step.fn(*args)
            else:
                values[step.name] = step.fn(*args, mask=values[step.mask])
        return values[self.outputs[0]]


@dataclass
class NumpyModel:
    """A model as a NumPy function: float32 [B, D] (dense) or [B, T, D] (LSTM) -> [B, C]."""

    graph: Graph
    input_dim: int
    parameters: int
    sequence: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim != (3 if self.sequence else 2) or x.shape[-1] != self.input_dim:
            shape = "[batch, frames, D]" if self.sequence else "[batch, D]"
            raise ValueError(f"expected inputs {shape} with D = {self.input_dim}, got {x.shape}")
        return self.graph(x).astype(np.float32, copy=False)

    def count_params(self) -> int:
        """Trainable and non-trainable parameters of the saved model, as Keras counts them."""
        return self.parameters


def load_numpy_model(path: str | Path) -> NumpyModel | None:
    """The model in the ``model.keras`` archive at ``path`` as a ``NumpyModel``, or None
    when it holds a layer this module does not run (see the module docstring)."""
    import h5py

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights = archive.read("model.weights.h5")
    if config.get("class_name") not in ("Functional", "Model"):
        return None
    with h5py.File(io.BytesIO(weights), "r") as h5:
        try:
            graph = Graph(config["config"], h5)
        except (UnsupportedModel, KeyError, IndexError):
            return None
        # The model's own variables (an optimizer's, saved beside them, are not counted).
        sizes: list[int] = []
        h5["layers"].visititems(
            lambda _, item: sizes.append(item.size) if hasattr(item, "dtype") else None
        )
        parameters = int(sum(sizes))
    shape = _input_shape(config["config"], graph.inputs[0])
    if shape is None or len(shape) not in (2, 3) or shape[-1] is None:
        return None
    return NumpyModel(graph, int(shape[-1]), parameters, sequence=len(shape) == 3)


def _input_shape(config: dict[str, Any], name: str) -> list[int | None] | None:
    """The batch shape ([None, D] or [None, None, D]) of the model's input layer ``name``."""
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer" and layer["name"] == name:
            return layer["config"].get("batch_shape")
    return None

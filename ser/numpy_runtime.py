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
class _Scale:
    """y = x * scale + shift per feature: a BatchNormalization at inference."""

    scale: np.ndarray
    shift: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale + self.shift


@dataclass
class _Affine:
    """y = activation(x @ weight + bias): a Dense, with a BatchNormalization folded in."""

    weight: np.ndarray
    bias: np.ndarray
    activation: str = "linear"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _activate(x @ self.weight + self.bias, self.activation)


def _inputs_of(layer: dict[str, Any]) -> list[str]:
    """Names of the layers feeding ``layer`` (one call only; plain tensors, no kwargs)."""
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) != 1:
        raise UnsupportedModel(f"layer {layer.get('name')!r} is called {len(nodes)} times")
    node = nodes[0]
    # ``training`` does not matter at inference; any other argument (a mask) might.
    kwargs = {k: v for k, v in (node.get("kwargs") or {}).items() if k != "training"}
    if any(value is not None for value in kwargs.values()):
        raise UnsupportedModel(f"layer {layer.get('name')!r} is called with {node['kwargs']}")
    args = node["args"]
    tensors = args[0] if len(args) == 1 and isinstance(args[0], list) else args
    names = []
    for tensor in tensors:
        if not (isinstance(tensor, dict) and tensor.get("class_name") == "__keras_tensor__"):
            raise UnsupportedModel(f"layer {layer.get('name')!r} has a non-tensor input")
        names.append(tensor["config"]["keras_history"][0])
    return names


def _dtype_is_float32(config: dict[str, Any]) -> bool:
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name")
    return dtype in (None, "float32")


def _layer_names(entries: list[Any]) -> list[str]:
    """Layer names of a config's ``input_layers``/``output_layers``: one ``[name, node,
    tensor]`` entry, or a list of them."""
    return [entries[0]] if entries and isinstance(entries[0], str) else [e[0] for e in entries]


class _Graph:
    """One functional model's layers, run in config order on named intermediate outputs."""

    def __init__(self, config: dict[str, Any], weights: Any) -> None:
        self.steps: list[tuple[str, list[str], Callable[..., np.ndarray]]] = []
        self.inputs = _layer_names(config["input_layers"])
        self.outputs = _layer_names(config["output_layers"])
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise UnsupportedModel("only models with one input and one output are supported")
        seen: dict[str, int] = {}
        for layer in config["layers"]:
            kind = layer["class_name"]
            group = _snake_case(kind)
            k = seen.get(group, 0)
            seen[group] = k + 1
            slot = weights["layers"][group if k == 0 else f"{group}_{k}"]
            if kind == "InputLayer":
                continue
            self.steps.append((layer["name"], _inputs_of(layer), self._build(layer, slot)))
        self._fold_batch_norms()

    def _build(self, layer: dict[str, Any], slot: Any) -> Callable[..., np.ndarray]:
        kind, cfg = layer["class_name"], layer["config"]
        if kind not in ("Functional", "Model") and not _dtype_is_float32(cfg):
            raise UnsupportedModel(f"layer {cfg.get('name')!r} is not float32")
        variables = [np.asarray(slot["vars"][str(i)], np.float32) for i in range(len(slot["vars"]))]
        if kind == "Dense":
            if cfg["activation"] not in ACTIVATIONS:
                raise UnsupportedModel(f"Dense activation {cfg['activation']!r}")
            weight = variables[0]
            if weight.shape[1] != cfg["units"]:
                raise UnsupportedModel(f"Dense {cfg['name']!r}: weights {weight.shape}")
            bias = variables[1] if cfg["use_bias"] else np.zeros(cfg["units"], np.float32)
            return _Affine(weight, bias, cfg["activation"])
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
            return _Scale(scale.astype(np.float32), shift.astype(np.float32))
        if kind == "ReLU":
            if cfg.get("max_value") is not None or cfg.get("negative_slope", 0.0) != 0.0:
                raise UnsupportedModel("ReLU with a cap or a slope")
            return lambda x: np.maximum(x, 0)
        if kind == "Activation" and cfg["activation"] in ACTIVATIONS:
            return lambda x, a=cfg["activation"]: _activate(x, a)
        if kind in IDENTITY_LAYERS:
            return lambda x: x
        if kind == "Average":
            return lambda *xs: sum(xs[1:], xs[0]) / np.float32(len(xs))
        if kind in ("Functional", "Model"):
            return _Graph(cfg, slot)
        raise UnsupportedModel(f"layer type {kind}")

    def _fold_batch_norms(self) -> None:
        """A linear Dense whose only consumer is a BatchNormalization -> one affine map."""
        users: dict[str, int] = {}
        for _, inputs, _ in self.steps:
            for name in inputs:
                users[name] = users.get(name, 0) + 1
        kept: list[tuple[str, list[str], Callable[..., np.ndarray]]] = []
        for name, inputs, fn in self.steps:
            if isinstance(fn, _Scale) and kept and inputs == [kept[-1][0]]:
                before, before_inputs, dense = kept[-1]
                if (
                    isinstance(dense, _Affine)
                    and dense.activation == "linear"
                    and users[before] == 1
                ):
                    folded = _Affine(dense.weight * fn.scale, dense.bias * fn.scale + fn.shift)
                    kept[-1] = (name, before_inputs, folded)
                    continue
            kept.append((name, inputs, fn))
        self.steps = kept

    def __call__(self, x: np.ndarray) -> np.ndarray:
        values = {self.inputs[0]: x}
        for name, inputs, fn in self.steps:
            values[name] = fn(*(values[i] for i in inputs))
        return values[self.outputs[0]]


@dataclass
class NumpyModel:
    """A dense model or ensemble as a NumPy function: float32 [B, D] -> [B, C]."""

    graph: _Graph
    input_dim: int
    parameters: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected inputs [batch, {self.input_dim}], got {x.shape}")
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
            graph = _Graph(config["config"], h5)
        except (UnsupportedModel, KeyError):
            return None
        # The model's own variables (an optimizer's, saved beside them, are not counted).
        sizes: list[int] = []
        h5["layers"].visititems(
            lambda _, item: sizes.append(item.size) if hasattr(item, "dtype") else None
        )
        parameters = int(sum(sizes))
    first = next(step for step in _first_affines(graph))
    return NumpyModel(graph, int(first.weight.shape[0]), parameters)


def _first_affines(graph: _Graph):
    """The affine maps applied to the model's input, in order (to read its width)."""
    for _, inputs, fn in graph.steps:
        if inputs == graph.inputs:
            if isinstance(fn, _Affine):
                yield fn
            elif isinstance(fn, _Graph):
                yield from _first_affines(fn)

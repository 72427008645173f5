"""Run a saved model with NumPy alone: no TensorFlow import, no compilation.

``read_numpy_model(path)`` reads a ``model.keras`` archive (its ``config.json`` graph
and ``model.weights.h5`` weights) into a ``NumpyModel`` when every layer is one it can
run exactly, and otherwise raises ``UnsupportedModel`` naming the layer (or setting);
``load_numpy_model`` returns None instead, and the caller uses Keras. It runs
``InputLayer``, ``Dense`` (linear, relu or softmax), ``Conv1D`` (stride 1, any
dilation; ``same``, ``valid`` or ``causal`` padding), ``BatchNormalization`` over the last axis, ``ReLU``,
``Dropout`` and the other identities at inference, ``Masking``, ``LSTM`` (and ``HoistedLSTM``) and ``GRU``
(tanh, sigmoid gates; called after ``Masking`` or with an explicit float mask),
``Bidirectional`` (concat), ``Average``, ``Add``, ``Concatenate``, nested functional models (the
members of a seed ensemble), and ``ser.models.layers``' ``FrameMask``,
``MaskedMaxPooling1D``, ``MaskedGlobalPooling`` (every statistic of ``POOLING_STATS``),
``MaskedWindowPooling1D`` and ``MaskedAttentionPooling``, all float32: every model type
this project trains (dense, lstm with any pooling, frame pooling or window statistics and
functionals branch, cnn, crnn, tcn) and
their ensembles. Mixed precision, for one, is refused.

Why: ``import tensorflow`` alone costs about 6 s of a command's start, and a Keras call
costs about 1 ms of fixed overhead, against about 0.3 ms for the few matrix products of
a dense model. Each BatchNormalization is folded into the Dense or Conv1D before it (exact
algebra; float32 rounding differs from Keras's by about 1e-7); one with no such layer
before it (the LSTM's batch-normalised functionals) runs as its own scale and shift.
Masks follow Keras: an all-zero frame is masked wherever it is (``Masking``,
``FrameMask``), and a recurrent layer keeps its state over a masked frame.
``tests/test_light_runtimes.py`` checks the probabilities against Keras's for every
model type.

The graph's steps (``Graph``, ``Step`` and the layer classes) are public:
``ser.onnx_export`` writes the same graph as ONNX. A layer with several outputs
(``MaskedMaxPooling1D``, ``MaskedWindowPooling1D``: frames and mask) holds them under
``output_key`` names.

Weights are found the way Keras 3 stores them: under each container, a layer's
variables live at ``layers/<snake_case(class name)>[_<k>]/vars/<i>``, where ``k``
counts earlier layers of the same class in that container (a recurrent layer's in its
``cell``, a ``Bidirectional``'s under ``forward_layer`` and ``backward_layer``). Shapes
are checked against the config, so a layout this module does not know fails loudly,
never silently.
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


def output_key(layer: str, index: int) -> str:
    """The name under which a graph holds output ``index`` of ``layer``: the layer's name
    for its first (usually only) output, ``name:index`` for the others."""
    return layer if index == 0 else f"{layer}:{index}"


def _tensor_name(value: Any) -> str | None:
    """The ``output_key`` of a serialised Keras tensor's producer, else None."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        layer, _node, index = value["config"]["keras_history"]
        return output_key(layer, index)
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


class Sum:
    """Add: the elementwise sum of its inputs (a residual connection)."""

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        return sum(xs[1:], xs[0])


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


def _check_plain_recurrent(cfg: dict[str, Any]) -> None:
    """Refuse, by name, the recurrent settings this runtime lacks."""
    odd = [
        key
        for key, plain in (("activation", "tanh"), ("recurrent_activation", "sigmoid"))
        if cfg.get(key, plain) != plain
    ]
    odd += [key for key in ("return_state", "stateful", "unroll") if cfg.get(key)]
    if odd:
        raise UnsupportedModel(f"recurrent layer {cfg['name']!r} with {', '.join(odd)}")


@dataclass
class Recurrent:
    """A Keras recurrent layer (``LSTMLayer``, ``GRULayer``) at inference: the frame loop.

    Masked frames (all-zero padding, or any all-zero frame under ``Masking``) leave the
    state unchanged, as Keras's masked RNNs do: their output repeats the previous one,
    or is zero with ``zero_masked`` (Keras's ``zero_output_for_mask``, which
    ``Bidirectional`` sets when it returns sequences). ``go_backwards`` runs from the
    last frame to the first (the backward half of a ``Bidirectional``); its sequence
    output is in the original frame order, as ``Bidirectional`` returns it. Without
    ``return_sequences`` the output is the state after the last real frame processed.
    """

    kernel: np.ndarray  # [D, G*H], G gates in Keras's order
    recurrent: np.ndarray  # [H, G*H]
    bias: np.ndarray  # [G*H], added to the input part
    return_sequences: bool
    go_backwards: bool = False
    zero_masked: bool = False

    @property
    def units(self) -> int:
        return self.recurrent.shape[0]

    def initial_state(self, batch: int) -> tuple[np.ndarray, ...]:
        """Zero state; its first entry is the output h."""
        return (np.zeros((batch, self.units), np.float32),)

    def step(self, inputs: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """One frame: its input part (x @ kernel + bias) and the state -> the next state."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        batch, frames, _ = x.shape
        inputs = x @ self.kernel + self.bias  # every frame's input part at once
        state = self.initial_state(batch)
        outputs = np.zeros((batch, frames, self.units), np.float32)
        for t in range(frames - 1, -1, -1) if self.go_backwards else range(frames):
            new = self.step(inputs[:, t], state)
            if mask is None:
                state = new
                outputs[:, t] = state[0]
                continue
            keep = mask[:, t, None] > 0
            state = tuple(np.where(keep, n, old) for n, old in zip(new, state))
            outputs[:, t] = np.where(keep, state[0], 0.0) if self.zero_masked else state[0]
        return outputs if self.return_sequences else state[0]


@dataclass
class LSTMLayer(Recurrent):
    """Keras's ``LSTM`` (tanh, sigmoid gates in the order i, f, c, o)."""

    def initial_state(self, batch: int) -> tuple[np.ndarray, ...]:
        return (np.zeros((batch, self.units), np.float32),) * 2  # h, c

    def step(self, inputs: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        h, c = state
        u = self.units
        z = inputs + h @ self.recurrent
        i, f = _sigmoid(z[:, :u]), _sigmoid(z[:, u : 2 * u])
        c = f * c + i * np.tanh(z[:, 2 * u : 3 * u])
        return _sigmoid(z[:, 3 * u :]) * np.tanh(c), c


@dataclass
class GRULayer(Recurrent):
    """Keras's ``GRU`` (tanh, sigmoid gates in the order z, r, h); with ``reset_after``
    (Keras's default) the reset gate multiplies the recurrent part after its bias."""

    recurrent_bias: np.ndarray | None = None  # [3H] with reset_after, else None
    reset_after: bool = True

    def step(self, inputs: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        (h,) = state
        u = self.units
        if self.reset_after:
            rec = h @ self.recurrent + self.recurrent_bias
            z = _sigmoid(inputs[:, :u] + rec[:, :u])
            r = _sigmoid(inputs[:, u : 2 * u] + rec[:, u : 2 * u])
            candidate = np.tanh(inputs[:, 2 * u :] + r * rec[:, 2 * u :])
        else:
            rec = h @ self.recurrent[:, : 2 * u]
            z = _sigmoid(inputs[:, :u] + rec[:, :u])
            r = _sigmoid(inputs[:, u : 2 * u] + rec[:, u:])
            candidate = np.tanh(inputs[:, 2 * u :] + (r * h) @ self.recurrent[:, 2 * u :])
        return (z * h + (1.0 - z) * candidate,)


# Saved recurrent layer classes -> the arithmetic they run (``HoistedLSTM`` is Keras's
# LSTM computed in another order, ``ser.models.layers``).
RECURRENT_KINDS = {"LSTM": "LSTM", "HoistedLSTM": "LSTM", "GRU": "GRU"}


def recurrent_layer(
    kind: str, cfg: dict[str, Any], variables: list[np.ndarray], *, in_bidirectional: bool = False
) -> Recurrent:
    """The ``LSTM`` or ``GRU`` of ``cfg`` with its weights, or ``UnsupportedModel``."""
    _check_plain_recurrent(cfg)
    if cfg.get("go_backwards") and not in_bidirectional:
        raise UnsupportedModel(f"recurrent layer {cfg['name']!r} with go_backwards")
    if cfg.get("zero_output_for_mask") and not in_bidirectional:
        raise UnsupportedModel(f"recurrent layer {cfg['name']!r} with zero_output_for_mask")
    units, gates = cfg["units"], 4 if kind == "LSTM" else 3
    if variables[1].shape != (units, gates * units):
        raise UnsupportedModel(f"{kind} {cfg['name']!r}: recurrent kernel {variables[1].shape}")
    common = {
        "return_sequences": bool(cfg["return_sequences"]),
        "go_backwards": bool(cfg.get("go_backwards")),
        "zero_masked": bool(cfg.get("zero_output_for_mask")),
    }
    zeros = np.zeros(gates * units, np.float32)
    bias = variables[2] if cfg["use_bias"] else zeros
    if kind == "LSTM":
        return LSTMLayer(variables[0], variables[1], bias, **common)
    reset_after = bool(cfg.get("reset_after", True))
    if reset_after:  # Keras keeps [input bias, recurrent bias] as one [2, 3H] variable
        bias, recurrent_bias = (bias[0], bias[1]) if cfg["use_bias"] else (zeros, zeros)
        return GRULayer(variables[0], variables[1], bias, **common, recurrent_bias=recurrent_bias)
    return GRULayer(variables[0], variables[1], bias, **common, reset_after=False)


@dataclass
class Bidirectional:
    """Keras's ``Bidirectional`` (merge mode concat): the forward layer's output, then the
    backward one's, both over the same mask."""

    forward: Recurrent
    backward: Recurrent

    def __call__(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return np.concatenate([self.forward(x, mask), self.backward(x, mask)], axis=-1)


def _cell_variables(slot: Any) -> list[np.ndarray]:
    """A recurrent layer's variables, kept in its cell."""
    holder = slot["cell"]["vars"]
    return [np.asarray(holder[str(i)], np.float32) for i in range(len(holder))]


def bidirectional_layer(cfg: dict[str, Any], slot: Any) -> Bidirectional:
    """The ``Bidirectional`` of ``cfg`` with its two layers' weights."""
    if cfg.get("merge_mode", "concat") != "concat":
        raise UnsupportedModel(f"Bidirectional {cfg['name']!r} merge mode {cfg['merge_mode']!r}")
    halves = []
    for key, default_backwards in (("layer", False), ("backward_layer", True)):
        inner = cfg.get(key) or cfg["layer"]
        kind, inner_cfg = RECURRENT_KINDS.get(inner["class_name"]), dict(inner["config"])
        if kind is None:
            raise UnsupportedModel(f"Bidirectional {cfg['name']!r} around a {inner['class_name']}")
        if key == "backward_layer" and not cfg.get("backward_layer"):
            inner_cfg["go_backwards"] = default_backwards
        variables = _cell_variables(slot[f"{'forward' if key == 'layer' else 'backward'}_layer"])
        halves.append(recurrent_layer(kind, inner_cfg, variables, in_bidirectional=True))
    if halves[0].go_backwards or not halves[1].go_backwards:
        raise UnsupportedModel(f"Bidirectional {cfg['name']!r} with unusual directions")
    return Bidirectional(*halves)


@dataclass
class Conv1D:
    """Keras's ``Conv1D`` (stride 1, one group) over [B, T, C] frames: ``pad`` zero
    frames before and after, then y_t = activation(sum_k x_{t+k*dilation} @ weight[k]
    + bias); a BatchNormalization after it is folded in."""

    weight: np.ndarray  # [K, C_in, C_out]
    bias: np.ndarray  # [C_out]
    pad: tuple[int, int]
    activation: str = "linear"
    dilation: int = 1

    @classmethod
    def from_config(cls, cfg: dict[str, Any], variables: list[np.ndarray]) -> Conv1D:
        name = cfg["name"]
        plain = (
            tuple(cfg.get("strides", [1])) == (1,)
            and cfg.get("groups", 1) == 1
            and cfg.get("data_format", "channels_last") == "channels_last"
        )
        if not plain:
            raise UnsupportedModel(f"Conv1D {name!r} with strides, groups or channels_first")
        if cfg["activation"] not in ACTIVATIONS:
            raise UnsupportedModel(f"Conv1D {name!r} activation {cfg['activation']!r}")
        weight = variables[0]
        dilation = int(tuple(cfg.get("dilation_rate", [1]))[0])
        span = (weight.shape[0] - 1) * dilation + 1  # frames one output reads
        pads = {"valid": (0, 0), "same": ((span - 1) // 2, span // 2), "causal": (span - 1, 0)}
        if cfg["padding"] not in pads:
            raise UnsupportedModel(f"Conv1D {name!r} padding {cfg['padding']!r}")
        bias = variables[1] if cfg["use_bias"] else np.zeros(weight.shape[2], np.float32)
        return cls(weight, bias, pads[cfg["padding"]], cfg["activation"], dilation)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.pad(x, ((0, 0), self.pad, (0, 0)))
        d = self.dilation
        frames = x.shape[1] - (self.weight.shape[0] - 1) * d
        y = sum(x[:, k * d : k * d + frames] @ self.weight[k] for k in range(self.weight.shape[0]))
        return _activate(y + self.bias, self.activation)


def fold_scale(step: Affine | Conv1D, scale: Scale) -> Affine | Conv1D:
    """A linear Dense or Conv1D followed by ``scale`` (a BatchNormalization) as one step."""
    weight, bias = step.weight * scale.scale, step.bias * scale.scale + scale.shift
    if isinstance(step, Conv1D):
        return Conv1D(weight, bias, step.pad, dilation=step.dilation)
    return Affine(weight, bias)


class RealFrames:
    """``ser.models.layers.FrameMask``: [B, T, D] -> float [B, T], 1 where a frame has any
    non-zero value (0: padding)."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.any(x != 0, axis=-1).astype(np.float32)


def _padded_to_windows(
    x: np.ndarray, mask: np.ndarray, p: int, fill: float
) -> tuple[np.ndarray, np.ndarray]:
    """x [B, T, C] and mask [B, T] right-padded to a multiple of ``p`` frames (x with
    ``fill``, the mask, as float32, with 0), as the masked window layers pad them."""
    extra = (-x.shape[1]) % p
    x = np.pad(x, ((0, 0), (0, extra), (0, 0)), constant_values=fill)
    return x, np.pad(mask.astype(np.float32), ((0, 0), (0, extra)))


@dataclass
class MaskedMaxPool:
    """``ser.models.layers.MaskedMaxPooling1D``: max over real frames in windows of
    ``pool`` frames from frame 0 (the last one may be short); a window without a real
    frame gives 0 and mask 0. (x, mask) -> (x, mask)."""

    pool: int

    def __call__(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch, _, channels = x.shape
        p = self.pool
        x, m = _padded_to_windows(np.where(mask[..., None] > 0, x, -np.inf), mask, p, -np.inf)
        x = x.reshape(batch, -1, p, channels).max(axis=2)
        m = m.reshape(batch, -1, p).max(axis=2)
        return np.where(m[..., None] > 0, x, 0.0).astype(np.float32), m


@dataclass
class MaskedWindowStats:
    """``ser.models.layers.MaskedWindowPooling1D``: ``MaskedStats`` of each window of
    ``pool`` frames from frame 0 (the last one padded), one step per window; a window
    without a real frame gives 0 and mask 0. (x, mask) -> (x, mask)."""

    pool: int
    stats: tuple[str, ...]

    def __call__(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch, _, channels = x.shape
        p = self.pool
        x, m = _padded_to_windows(x, mask, p, 0.0)
        pooled = MaskedStats(self.stats)(x.reshape(-1, p, channels), m.reshape(-1, p))
        pooled = pooled.reshape(batch, -1, channels * len(self.stats))
        m = m.reshape(batch, -1, p).max(axis=2)
        return np.where(m[..., None] > 0, pooled, 0.0).astype(np.float32), m


# ``keras.config.epsilon()``'s default, which ``MaskedGlobalPooling``'s std adds.
KERAS_EPSILON = 1e-7
# Twin of ``ser.models.layers.CONSTANT_VARIANCE`` (that module imports Keras, this one
# must not): below this variance a channel's skew and kurtosis are 0. A test checks
# that the two are equal.
CONSTANT_VARIANCE = 1e-6


@dataclass
class MaskedStats:
    """``ser.models.layers.MaskedGlobalPooling``: ``stats`` (mean, std, max, min, skew,
    kurtosis, slope, delta) over the real frames, concatenated, computed as that layer
    does in float32; a sequence without a real frame pools to zeros."""

    stats: tuple[str, ...]

    def __call__(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        weights = mask.astype(np.float32)[..., None]  # [B, T, 1]
        count = weights.sum(axis=1)  # [B, 1]
        safe = np.maximum(count, np.float32(1.0))
        mean = (x * weights).sum(axis=1) / safe
        centred = (x - mean[:, None]) * weights
        variance = np.square(centred).sum(axis=1) / safe
        pooled = []
        for stat in self.stats:
            if stat == "mean":
                pooled.append(mean)
            elif stat == "std":
                pooled.append(np.sqrt(variance + np.float32(KERAS_EPSILON)))
            elif stat in ("max", "min"):
                sign = np.float32(1.0 if stat == "max" else -1.0)
                peak = np.where(weights > 0, sign * x, -np.inf).max(axis=1)
                pooled.append(np.where(count > 0, sign * peak, 0.0))
            elif stat in ("skew", "kurtosis"):
                pooled.append(_standard_moment(centred, variance, safe, stat))
            elif stat == "slope":
                pooled.append(_slope(centred, count))
            else:
                pooled.append(_mean_change(x, weights, count))
        return np.concatenate(pooled, axis=-1).astype(np.float32)


def _standard_moment(
    centred: np.ndarray, variance: np.ndarray, count: np.ndarray, stat: str
) -> np.ndarray:
    """``MaskedGlobalPooling``'s skewness or excess kurtosis per channel, 0 for a channel
    that is constant over the clip."""
    constant = variance <= np.float32(CONSTANT_VARIANCE)
    safe = np.where(constant, np.float32(1.0), variance)
    squares = np.square(centred)
    if stat == "skew":
        value = (squares * centred).sum(axis=1) / count / (safe * np.sqrt(safe))
    else:
        value = np.square(squares).sum(axis=1) / count / np.square(safe) - np.float32(3.0)
    return np.where(constant, np.float32(0.0), value)


def _slope(centred: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``MaskedGlobalPooling``'s least-squares slope per channel against time scaled to
    [-1, 1] over the first ``count`` frames; 0 below two real frames."""
    steps = np.arange(centred.shape[1], dtype=np.float32)  # [T]
    span = np.maximum(count - np.float32(1.0), np.float32(1.0))  # [B, 1]
    t = (np.float32(2.0) * steps[None] / span - np.float32(1.0))[..., None]  # [B, T, 1]
    real = (steps[None, :, None] < count[:, None]).astype(np.float32)
    denominator = (np.square(t) * real).sum(axis=1)  # [B, 1]
    value = (t * centred).sum(axis=1) / np.maximum(denominator, np.float32(1e-12))
    return np.where(count > 1.0, value, np.float32(0.0))


def _mean_change(x: np.ndarray, weights: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``MaskedGlobalPooling``'s mean absolute change between neighbouring frames whose
    second frame is real; 0 below two real frames."""
    change = np.abs(x[:, 1:] - x[:, :-1]) * weights[:, 1:]
    return change.sum(axis=1) / np.maximum(count - np.float32(1.0), np.float32(1.0))


@dataclass
class Concat:
    """Keras's ``Concatenate``: its inputs joined along ``axis``."""

    axis: int

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        return np.concatenate(xs, axis=self.axis)


@dataclass
class AttentionPool:
    """``ser.models.layers.MaskedAttentionPooling``: softmax over the real frames of
    ``tanh(x @ hidden_kernel + hidden_bias) @ score_kernel``, then the weighted sum of x;
    padded frames weigh 0 and a sequence without a real frame pools to zeros."""

    hidden_kernel: np.ndarray  # [C, U]
    hidden_bias: np.ndarray  # [U]
    score_kernel: np.ndarray  # [U, 1]

    def __call__(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        hidden = np.tanh(x @ self.hidden_kernel + self.hidden_bias)
        scores = (hidden @ self.score_kernel)[..., 0]
        valid = mask > 0
        scores = np.where(valid, scores, -np.inf)
        peak = scores.max(axis=1, keepdims=True)
        peak = np.where(np.isfinite(peak), peak, 0.0)
        weights = np.where(valid, np.exp(scores - peak), 0.0)
        weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-30)
        return (x * weights[..., None]).sum(axis=1).astype(np.float32)


# ``ser.models.layers``' custom layers, by class name -> (config, variables) -> step.
SER_LAYERS: dict[str, Callable[[dict[str, Any], list[np.ndarray]], Callable[..., Any]]] = {
    "FrameMask": lambda cfg, variables: RealFrames(),
    "MaskedMaxPooling1D": lambda cfg, variables: MaskedMaxPool(int(cfg["pool_size"])),
    "MaskedGlobalPooling": lambda cfg, variables: MaskedStats(tuple(cfg["stats"])),
    "MaskedWindowPooling1D": lambda cfg, variables: MaskedWindowStats(
        int(cfg["pool_size"]), tuple(cfg["stats"])
    ),
    "MaskedAttentionPooling": lambda cfg, v: AttentionPool(v[0], v[1], v[2]),
}


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
            if kind == "BatchNormalization":
                mask = None  # at inference it uses its moving statistics, mask or not
            self.steps.append(Step(layer["name"], inputs, self._build_named(layer, slot), mask))
        self._fold_batch_norms()

    def _build_named(self, layer: dict[str, Any], slot: Any) -> Callable[..., Any]:
        """``_build``, with any refusal or unexpected weight layout naming the layer."""
        try:
            return self._build(layer, slot)
        except UnsupportedModel as exc:
            if str(exc).startswith("layer "):  # a nested model's layer, named already
                raise
            raise UnsupportedModel(f"layer {layer['name']!r} ({layer['class_name']}): {exc}")
        except (KeyError, IndexError) as exc:
            raise UnsupportedModel(
                f"layer {layer['name']!r} ({layer['class_name']}): weights not where "
                f"expected ({exc})"
            ) from None

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
        if kind in RECURRENT_KINDS:
            return recurrent_layer(RECURRENT_KINDS[kind], cfg, variables)
        if kind == "Bidirectional":
            return bidirectional_layer(cfg, slot)
        if kind == "Conv1D":
            return Conv1D.from_config(cfg, variables)
        if kind in SER_LAYERS:
            return SER_LAYERS[kind](cfg, variables)
        if kind == "Average":
            return Mean()
        if kind == "Add":
            return Sum()
        if kind == "Concatenate":
            return Concat(int(cfg["axis"]))
        if kind in ("Functional", "Model"):
            return Graph(cfg, slot)
        raise UnsupportedModel(f"no NumPy form for layer type {kind}")

    def _fold_batch_norms(self) -> None:
        """A linear Dense or Conv1D whose only consumer is a BatchNormalization -> one step."""
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
                    isinstance(dense, (Affine, Conv1D))
                    and dense.activation == "linear"
                    and users[before.name] == 1
                ):
                    folded = fold_scale(dense, fn)
                    kept[-1] = Step(step.name, before.inputs, folded, before.mask)
                    continue
            kept.append(step)
        self.steps = kept

    def __call__(self, x: np.ndarray) -> np.ndarray:
        values = {self.inputs[0]: x}
        for step in self.steps:
            args = [values[i] for i in step.inputs]
            if step.mask is None:
                out = step.fn(*args)
            else:
                out = step.fn(*args, mask=values[step.mask])
            for i, value in enumerate(out if isinstance(out, tuple) else (out,)):
                values[output_key(step.name, i)] = value
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


def read_numpy_model(path: str | Path) -> NumpyModel:
    """The model in the ``model.keras`` archive at ``path`` as a ``NumpyModel``, or
    ``UnsupportedModel`` naming the layer (or setting) this module does not run."""
    import h5py

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights = archive.read("model.weights.h5")
    if config.get("class_name") not in ("Functional", "Model"):
        raise UnsupportedModel(f"a {config.get('class_name')} model (functional models only)")
    with h5py.File(io.BytesIO(weights), "r") as h5:
        try:
            graph = Graph(config["config"], h5)
        except (KeyError, IndexError) as exc:
            raise UnsupportedModel(f"weights not where expected ({exc})") from None
        # The model's own variables (an optimizer's, saved beside them, are not counted).
        sizes: list[int] = []
        h5["layers"].visititems(
            lambda _, item: sizes.append(item.size) if hasattr(item, "dtype") else None
        )
        parameters = int(sum(sizes))
    shape = _input_shape(config["config"], graph.inputs[0])
    if shape is None or len(shape) not in (2, 3) or shape[-1] is None:
        raise UnsupportedModel(f"input shape {shape} (expected [batch, D] or [batch, frames, D])")
    return NumpyModel(graph, int(shape[-1]), parameters, sequence=len(shape) == 3)


def load_numpy_model(path: str | Path) -> NumpyModel | None:
    """``read_numpy_model``, or None when the model holds something this module does not
    run (the caller then uses Keras)."""
    try:
        return read_numpy_model(path)
    except UnsupportedModel:
        return None


def _input_shape(config: dict[str, Any], name: str) -> list[int | None] | None:
    """The batch shape ([None, D] or [None, None, D]) of the model's input layer ``name``."""
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer" and layer["name"] == name:
            return layer["config"].get("batch_shape")
    return None

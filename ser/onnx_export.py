"""A run's model as an ONNX graph, for ONNX Runtime on servers, phones and browsers.

``to_onnx(model)`` writes the graph of a ``ser.numpy_runtime.NumpyModel`` (every model
type this project trains, an ensemble as one graph) with the same arithmetic: Dense as
MatMul + Add and Conv1D as Conv (a BatchNormalization folded in, or as Mul + Add where
there is nothing to fold it into), ReLU, Softmax, an ensemble's average as Mean,
a residual Add as Sum, Concatenate as Concat, Keras's LSTM and GRU (and ``Bidirectional`` pairs) as ONNX's LSTM
and GRU operators (LSTM gates reordered: Keras i, f, c, o; ONNX i, o, f, c; Keras's GRU
``reset_after`` is ONNX's ``linear_before_reset``), and the masked layers of
``ser.models.layers`` from elementary operators (``MaskedGlobalPooling`` with every one
of its statistics, in the layer's own arithmetic, and ``MaskedWindowPooling1D`` as
those statistics of windows folded into the batch axis). Input ``features``: float32
``[batch, D]`` or ``[batch, frames, D]`` (free batch and frame axes), normalised as
``normaliser.json`` says; output ``probabilities`` ``[batch, classes]``.
A step it cannot write raises ``UnsupportedForONNX``.

Masking: Keras's recurrent layers skip every masked (all-zero) frame, wherever it is,
while ONNX's only stop at ``sequence_lens``. So each sequence's real frames are moved to
its front, in order, before the recurrent node (its lengths: their count), and the
outputs of a layer returning sequences are gathered back to the original frames (a
masked frame gets the previous output, or zeros inside ``Bidirectional``, as in Keras).
The result equals Keras's for padding at the end and for all-zero frames inside a clip.
``ser export RUN --format onnx`` checks every export against the run's own model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ser.numpy_runtime import (
    CONSTANT_VARIANCE,
    KERAS_EPSILON,
    Activation,
    Affine,
    AnyOf,
    AttentionPool,
    Bidirectional,
    Concat,
    Conv1D,
    Graph,
    Identity,
    LSTMLayer,
    MaskedMaxPool,
    MaskedStats,
    MaskedWindowStats,
    Mean,
    NotEqual,
    NumpyModel,
    RealFrames,
    Recurrent,
    Scale,
    Sum,
    UnsupportedModel,
    output_key,
)

OPSET = 17
INPUT, OUTPUT = "features", "probabilities"


class UnsupportedForONNX(UnsupportedModel):
    """The model holds a step this exporter cannot write (though NumPy may run it)."""


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
        self.weights.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def op(self, kind: str, inputs: list[str], hint: str, outputs: int = 1, **attrs) -> list[str]:
        from onnx import helper

        names = [self.name(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(kind, inputs, names, **attrs))
        return names


def _keras_gates_to_onnx(matrix: np.ndarray, units: int) -> np.ndarray:
    """[..., 4H] in Keras's LSTM gate order (i, f, c, o) -> ONNX's order (i, o, f, c)."""
    i, f, c, o = (matrix[..., k * units : (k + 1) * units] for k in range(4))
    return np.concatenate([i, o, f, c], axis=-1)


def _ints(w: _Writer, values: list[int], hint: str = "ints") -> str:
    return w.constant(np.array(values, np.int64), hint)


def _float(w: _Writer, value: float, hint: str = "value") -> str:
    return w.constant(np.array(value, np.float32), hint)


def _frames(w: _Writer, x: str) -> str:
    """The frame count of a [B, T, ...] tensor, as int64 [1]."""
    return w.op("Shape", [x], "frames", start=1, end=2)[0]


def _positions(w: _Writer, x: str) -> str:
    """The frame indices 0, 1, ..., T-1 of a [B, T, ...] tensor, as float [T]."""
    from onnx import TensorProto

    count = w.op("Squeeze", [_frames(w, x)], "count")[0]
    one = w.constant(np.array(1, np.int64), "one")
    positions = w.op("Range", [w.constant(np.array(0, np.int64), "zero"), count, one], "t")[0]
    return w.op("Cast", [positions], "t_float", to=TensorProto.FLOAT)[0]


@dataclass
class _Compacted:
    """A masked batch with each sequence's real frames moved to its front, in order, and
    what it takes to put outputs back (``_compact``)."""

    x: str  # [B, T, D]
    lengths: str  # int32 [B]: real frames per sequence
    before: str  # int64 [B, T]: real frames before each frame
    mask: str  # float [B, T]


def _compact(w: _Writer, x: str, mask: str) -> _Compacted:
    """Real frames first: Keras's RNNs skip every masked frame (not only trailing ones), so
    the state after the real frames equals the ONNX recurrent operator's over the real
    frames alone, with ``sequence_lens`` their count. The order comes from sorting the keys
    (masked ? T : 0) + t, which keeps real frames in order."""
    from onnx import TensorProto

    frames = _frames(w, x)
    positions = _positions(w, x)
    masked = w.op("Sub", [_float(w, 1.0, "one"), mask], "masked")[0]
    span = w.op("Cast", [frames], "span", to=TensorProto.FLOAT)[0]
    keys = w.op("Add", [w.op("Mul", [masked, span], "late")[0], positions], "keys")[0]
    _, order = w.op("TopK", [keys, frames], "order", outputs=2, axis=1, largest=0, sorted=1)
    index = w.op("Unsqueeze", [order, _ints(w, [-1], "axes")], "index")[0]
    compact = w.op("GatherND", [x, index], "real_first", batch_dims=1)[0]
    total = w.op("ReduceSum", [mask, _ints(w, [1], "axes")], "real", keepdims=0)[0]
    lengths = w.op("Cast", [total], "lengths", to=TensorProto.INT32)[0]
    running = w.op("CumSum", [mask, w.constant(np.array(1, np.int64), "axis")], "running")[0]
    before = w.op("Sub", [running, mask], "before_float")[0]
    before = w.op("Cast", [before], "before", to=TensorProto.INT64)[0]
    return _Compacted(compact, lengths, before, mask)


def _onnx_weights(layer: Recurrent) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One direction's ONNX W [G*H, D], R [G*H, H] and B [2*G*H] of a Keras layer."""
    units = layer.units
    if isinstance(layer, LSTMLayer):
        kernel = _keras_gates_to_onnx(layer.kernel, units)
        recurrent = _keras_gates_to_onnx(layer.recurrent, units)
        bias = np.concatenate([_keras_gates_to_onnx(layer.bias, units), np.zeros(4 * units)])
        return kernel.T, recurrent.T, bias
    # Keras's GRU gates (z, r, h) are ONNX's order already.
    recurrent_bias = layer.recurrent_bias if layer.reset_after else np.zeros(3 * units)
    return layer.kernel.T, layer.recurrent.T, np.concatenate([layer.bias, recurrent_bias])


def _recurrent(w: _Writer, layers: list[Recurrent], x: str, mask: str | None) -> str:
    """One ONNX LSTM or GRU node for ``layers`` (one forward layer, or a Bidirectional's
    forward and backward ones, outputs concatenated) over [B, T, D] -> [B, (T,) dirs*H]."""
    first = layers[0]
    kind = "LSTM" if isinstance(first, LSTMLayer) else "GRU"
    weights = [_onnx_weights(layer) for layer in layers]
    compacted = None if mask is None else _compact(w, x, mask)
    source = x if compacted is None else compacted.x
    inputs = [w.op("Transpose", [source], "time_major", perm=[1, 0, 2])[0]]
    for k, hint in enumerate(("W", "R", "B")):
        stacked = np.stack([np.asarray(wt[k], np.float32) for wt in weights])
        inputs.append(w.constant(np.ascontiguousarray(stacked, np.float32), f"{kind}_{hint}"))
    attrs = {"hidden_size": first.units}
    if len(layers) == 2:
        attrs["direction"] = "bidirectional"
    if kind == "GRU":
        attrs["linear_before_reset"] = int(first.reset_after)
    if compacted is not None:
        inputs.append(compacted.lengths)
    y, y_h = w.op(kind, inputs, kind.lower(), outputs=2, **attrs)
    if not first.return_sequences:  # [dirs, B, H] -> [B, dirs*H]
        batch_major = w.op("Transpose", [y_h], "last", perm=[1, 0, 2])[0]
        return w.op("Reshape", [batch_major, _ints(w, [0, -1], "shape")], "state")[0]
    y = w.op("Transpose", [y], "batch_major", perm=[2, 0, 1, 3])[0]  # [B, T, dirs, H]
    if compacted is None:
        return w.op("Reshape", [y, _ints(w, [0, 0, -1], "shape")], "sequence")[0]
    parts = [_restore_order(w, y, d, layer, compacted) for d, layer in enumerate(layers)]
    return parts[0] if len(parts) == 1 else w.op("Concat", parts, "sequence", axis=-1)[0]


def _restore_order(w: _Writer, y: str, direction: int, layer: Recurrent, c: _Compacted) -> str:
    """Direction ``direction`` of a compacted run's outputs [B, T, dirs, H] back at the
    original frames: a forward layer's output at frame t is its output after the last real
    frame up to t, a backward one's after the first real frame from t; masked frames get
    zeros (``zero_masked``) or, forward, the previous output (zeros before any)."""
    from onnx import TensorProto

    outputs = w.op("Gather", [y, w.constant(np.array(direction, np.int64), "d")], "dir", axis=2)[0]
    if layer.go_backwards:
        if not layer.zero_masked:
            raise UnsupportedForONNX("a backward layer's sequence without zero_output_for_mask")
        position = c.before
    else:
        running = w.op(
            "Add", [c.before, w.op("Cast", [c.mask], "m", to=TensorProto.INT64)[0]], "n"
        )[0]
        position = w.op(
            "Max", [w.op("Sub", [running, _ints(w, [1])], "last")[0], _ints(w, [0])], "p"
        )[0]
    index = w.op("Unsqueeze", [position, _ints(w, [-1], "axes")], "index")[0]
    gathered = w.op("GatherND", [outputs, index], "restored", batch_dims=1)[0]
    if layer.zero_masked:
        keep = c.mask
    else:  # frames after the first real one carry its output on
        seen = w.op("Greater", [running, _ints(w, [0])], "seen")[0]
        keep = w.op("Cast", [seen], "keep", to=TensorProto.FLOAT)[0]
    keep = w.op("Unsqueeze", [keep, _ints(w, [-1], "axes")], "keep3")[0]
    return w.op("Mul", [gathered, keep], "sequence")[0]


def _conv(w: _Writer, conv: Conv1D, x: str) -> str:
    """Conv1D on [B, T, C]: ONNX's Conv works on [B, C, T]."""
    channels_first = w.op("Transpose", [x], "ncw", perm=[0, 2, 1])[0]
    weight = w.constant(np.ascontiguousarray(conv.weight.transpose(2, 1, 0)), "conv_W")
    y = w.op(
        "Conv",
        [channels_first, weight, w.constant(conv.bias, "conv_b")],
        "conv",
        kernel_shape=[conv.weight.shape[0]],
        pads=list(conv.pad),
        dilations=[conv.dilation],
    )[0]
    y = w.op("Transpose", [y], "nwc", perm=[0, 2, 1])[0]
    return _step(w, Activation(conv.activation), [y], None)


def _real_frames(w: _Writer, x: str) -> str:
    """``RealFrames``: float [B, T], 1 where a frame has a non-zero value."""
    nonzero = _step(w, NotEqual(0.0), [x], None)
    return _step(w, AnyOf(-1, False), [nonzero], None)


def _is_real(w: _Writer, mask: str, expand: bool) -> str:
    """mask > 0 as booleans, [B, T] or (``expand``) [B, T, 1]."""
    real = w.op("Greater", [mask, _float(w, 0.0, "zero")], "real")[0]
    return w.op("Unsqueeze", [real, _ints(w, [-1], "axes")], "real3")[0] if expand else real


def _padded_to_windows(w: _Writer, x: str, mask: str, p: int, fill: float) -> tuple[str, str]:
    """x [B, T, C] and mask [B, T] right-padded to a multiple of ``p`` frames (x with
    ``fill``, the mask with 0), as the masked window layers pad them."""
    p_const = _ints(w, [p], "p")
    extra = w.op(
        "Mod",
        [w.op("Sub", [p_const, w.op("Mod", [_frames(w, x), p_const], "r")[0]], "s")[0], p_const],
        "extra",
    )[0]
    x_pads = w.op("Concat", [_ints(w, [0, 0, 0, 0]), extra, _ints(w, [0])], "x_pads", axis=0)[0]
    m_pads = w.op("Concat", [_ints(w, [0, 0, 0]), extra], "m_pads", axis=0)[0]
    padded = w.op("Pad", [x, x_pads, _float(w, fill, "fill")], "padded")[0]
    padded_mask = w.op("Pad", [mask, m_pads, _float(w, 0.0, "zero")], "padded_mask")[0]
    return padded, padded_mask


def _masked_max_pool(w: _Writer, pool: MaskedMaxPool, x: str, mask: str) -> list[str]:
    """``MaskedMaxPool``: pad T up to a multiple of p (with -inf; mask 0), reshape to
    windows, take their max."""
    p = pool.pool
    channels = w.op("Shape", [x], "channels", start=2, end=3)[0]
    hidden = w.op("Where", [_is_real(w, mask, True), x, _float(w, -np.inf, "ninf")], "hide")[0]
    padded, padded_mask = _padded_to_windows(w, hidden, mask, p, -np.inf)
    shape = w.op("Concat", [_ints(w, [0, -1, p]), channels], "windows_shape", axis=0)[0]
    windows = w.op("Reshape", [padded, shape], "windows")[0]
    pooled = w.op("ReduceMax", [windows], "pooled", axes=[2], keepdims=0)[0]
    mask_windows = w.op("Reshape", [padded_mask, _ints(w, [0, -1, p])], "mask_windows")[0]
    pooled_mask = w.op("ReduceMax", [mask_windows], "pooled_mask", axes=[2], keepdims=0)[0]
    zero = _float(w, 0.0, "zero")
    x_out = w.op("Where", [_is_real(w, pooled_mask, True), pooled, zero], "pool_out")[0]
    return [x_out, pooled_mask]


def _masked_window_stats(w: _Writer, pool: MaskedWindowStats, x: str, mask: str) -> list[str]:
    """``MaskedWindowStats``: pad T up to a multiple of p (zeros; mask 0), fold the
    windows into the batch axis, take ``MaskedStats`` of each, unfold, zero the windows
    of padding."""
    p = pool.pool
    batch = w.op("Shape", [x], "batch", start=0, end=1)[0]
    channels = w.op("Shape", [x], "channels", start=2, end=3)[0]
    padded, padded_mask = _padded_to_windows(w, x, mask, p, 0.0)
    fold = w.op("Concat", [_ints(w, [-1, p]), channels], "fold_shape", axis=0)[0]
    windows = w.op("Reshape", [padded, fold], "windows")[0]
    window_frames = w.op("Reshape", [padded_mask, _ints(w, [-1, p])], "window_frames")[0]
    pooled = _masked_stats(w, MaskedStats(pool.stats), windows, window_frames)
    width = w.op("Mul", [channels, _ints(w, [len(pool.stats)], "k")], "width")[0]
    unfold = w.op("Concat", [batch, _ints(w, [-1]), width], "unfold_shape", axis=0)[0]
    pooled = w.op("Reshape", [pooled, unfold], "window_stats")[0]
    by_window = w.op("Concat", [batch, _ints(w, [-1, p])], "mask_shape", axis=0)[0]
    mask_windows = w.op("Reshape", [padded_mask, by_window], "mask_windows")[0]
    pooled_mask = w.op("ReduceMax", [mask_windows], "pooled_mask", axes=[2], keepdims=0)[0]
    zero = _float(w, 0.0, "zero")
    x_out = w.op("Where", [_is_real(w, pooled_mask, True), pooled, zero], "window_out")[0]
    return [x_out, pooled_mask]


def _masked_stats(w: _Writer, stats: MaskedStats, x: str, mask: str) -> str:
    """``MaskedStats``: its statistics over the real frames, concatenated, with the same
    arithmetic."""
    axes = _ints(w, [1], "axes")
    weights = w.op("Unsqueeze", [mask, _ints(w, [-1], "axes")], "weights")[0]
    count = w.op("ReduceSum", [weights, axes], "count", keepdims=0)[0]  # [B, 1]
    safe = w.op("Max", [count, _float(w, 1.0, "one")], "safe")[0]
    mean = _frame_sum(w, w.op("Mul", [x, weights], "weighted")[0], safe, "mean")
    expanded = w.op("Unsqueeze", [mean, axes], "mean3")[0]
    centred = w.op("Mul", [w.op("Sub", [x, expanded], "dev")[0], weights], "centred")[0]
    variance = _frame_sum(w, w.op("Mul", [centred, centred], "square")[0], safe, "var")
    pooled = []
    for stat in stats.stats:
        if stat == "mean":
            pooled.append(mean)
        elif stat == "std":
            shifted = w.op("Add", [variance, _float(w, KERAS_EPSILON, "eps")], "var_eps")[0]
            pooled.append(w.op("Sqrt", [shifted], "std")[0])
        elif stat in ("max", "min"):
            pooled.append(_masked_extreme(w, x, mask, count, stat))
        elif stat in ("skew", "kurtosis"):
            pooled.append(_standard_moment(w, centred, variance, safe, stat))
        elif stat == "slope":
            pooled.append(_slope(w, centred, count))
        else:
            pooled.append(_mean_change(w, x, weights, count))
    return pooled[0] if len(pooled) == 1 else w.op("Concat", pooled, "stats", axis=-1)[0]


def _frame_sum(w: _Writer, x: str, divisor: str | None, hint: str) -> str:
    """[B, T, C] summed over the frames (and divided by ``divisor`` [B, 1]) -> [B, C]."""
    total = w.op("ReduceSum", [x, _ints(w, [1], "axes")], f"{hint}_sum", keepdims=0)[0]
    return total if divisor is None else w.op("Div", [total, divisor], hint)[0]


def _masked_extreme(w: _Writer, x: str, mask: str, count: str, stat: str) -> str:
    """The max or min of each channel over the real frames; 0 without a real frame."""
    fill, reduce = (-np.inf, "ReduceMax") if stat == "max" else (np.inf, "ReduceMin")
    hidden = w.op("Where", [_is_real(w, mask, True), x, _float(w, fill, "fill")], "hide")[0]
    peak = w.op(reduce, [hidden], "peak", axes=[1], keepdims=0)[0]
    some = w.op("Greater", [count, _float(w, 0.0, "zero")], "some")[0]
    return w.op("Where", [some, peak, _float(w, 0.0, "zero")], stat)[0]


def _standard_moment(w: _Writer, centred: str, variance: str, count: str, stat: str) -> str:
    """``MaskedStats``' skewness or excess kurtosis per channel, 0 for a constant one."""
    constant = w.op(
        "LessOrEqual", [variance, _float(w, CONSTANT_VARIANCE, "constant")], "constant"
    )[0]
    safe = w.op("Where", [constant, _float(w, 1.0, "one"), variance], "safe_var")[0]
    squares = w.op("Mul", [centred, centred], "squares")[0]
    if stat == "skew":
        cubes = w.op("Mul", [squares, centred], "cubes")[0]
        scale = w.op("Mul", [safe, w.op("Sqrt", [safe], "sd")[0]], "sd3")[0]
        value = w.op("Div", [_frame_sum(w, cubes, count, "m3"), scale], "skew")[0]
    else:
        fourths = w.op("Mul", [squares, squares], "fourths")[0]
        scale = w.op("Mul", [safe, safe], "var2")[0]
        ratio = w.op("Div", [_frame_sum(w, fourths, count, "m4"), scale], "ratio")[0]
        value = w.op("Sub", [ratio, _float(w, 3.0, "three")], "kurtosis")[0]
    return w.op("Where", [constant, _float(w, 0.0, "zero"), value], "moment")[0]


def _slope(w: _Writer, centred: str, count: str) -> str:
    """``MaskedStats``' least-squares slope per channel against time scaled to [-1, 1]
    over the first ``count`` frames; 0 below two real frames."""
    from onnx import TensorProto

    one = _float(w, 1.0, "one")
    steps = w.op("Unsqueeze", [_positions(w, centred), _ints(w, [0], "axes")], "steps")[0]
    span = w.op("Max", [w.op("Sub", [count, one], "span")[0], one], "safe_span")[0]
    scaled = w.op("Div", [w.op("Mul", [_float(w, 2.0, "two"), steps], "2t")[0], span], "tt")[0]
    t = w.op("Sub", [scaled, one], "t")[0]
    t = w.op("Unsqueeze", [t, _ints(w, [-1], "axes")], "t3")[0]  # [B, T, 1]
    steps3 = w.op("Unsqueeze", [steps, _ints(w, [-1], "axes")], "steps3")[0]  # [1, T, 1]
    counts3 = w.op("Unsqueeze", [count, _ints(w, [1], "axes")], "counts3")[0]  # [B, 1, 1]
    real = w.op(
        "Cast", [w.op("Less", [steps3, counts3], "first")[0]], "real", to=TensorProto.FLOAT
    )[0]
    spread = w.op("Mul", [w.op("Mul", [t, t], "t2")[0], real], "t2_real")[0]
    denominator = _frame_sum(w, spread, None, "denominator")
    denominator = w.op("Max", [denominator, _float(w, 1e-12, "tiny")], "safe_denominator")[0]
    value = _frame_sum(w, w.op("Mul", [t, centred], "tx")[0], denominator, "slope")
    two_frames = w.op("Greater", [count, one], "two_frames")[0]
    return w.op("Where", [two_frames, value, _float(w, 0.0, "zero")], "slope_or_0")[0]


def _mean_change(w: _Writer, x: str, weights: str, count: str) -> str:
    """``MaskedStats``' mean absolute change between neighbouring frames whose second
    frame is real; 0 below two real frames."""
    one = _float(w, 1.0, "one")
    axes, end = _ints(w, [1], "axes"), _ints(w, [np.iinfo(np.int64).max], "end")
    later = w.op("Slice", [x, _ints(w, [1], "start"), end, axes], "later")[0]
    earlier = w.op("Slice", [x, _ints(w, [0], "start"), _ints(w, [-1], "end"), axes], "earlier")[0]
    real = w.op("Slice", [weights, _ints(w, [1], "start"), end, axes], "later_real")[0]
    change = w.op("Abs", [w.op("Sub", [later, earlier], "step")[0]], "change")[0]
    pairs = w.op("Max", [w.op("Sub", [count, one], "pairs")[0], one], "safe_pairs")[0]
    return _frame_sum(w, w.op("Mul", [change, real], "real_change")[0], pairs, "delta")


def _attention_pool(w: _Writer, attention: AttentionPool, x: str, mask: str) -> str:
    """``AttentionPool``: a softmax over the real frames' scores weighs the frames."""
    hidden = w.op("MatMul", [x, w.constant(attention.hidden_kernel, "att_W")], "att_h")[0]
    hidden = w.op(
        "Tanh",
        [w.op("Add", [hidden, w.constant(attention.hidden_bias, "att_b")], "att_z")[0]],
        "att_t",
    )[0]
    scores = w.op("MatMul", [hidden, w.constant(attention.score_kernel, "att_v")], "scores3")[0]
    scores = w.op("Squeeze", [scores, _ints(w, [-1], "axes")], "scores")[0]
    real = _is_real(w, mask, False)
    scores = w.op("Where", [real, scores, _float(w, -np.inf, "ninf")], "real_scores")[0]
    peak = w.op("ReduceMax", [scores], "peak", axes=[1], keepdims=1)[0]
    peak = w.op(
        "Where", [w.op("IsInf", [peak], "no_frame")[0], _float(w, 0.0, "zero"), peak], "safe_peak"
    )[0]
    exp = w.op("Exp", [w.op("Sub", [scores, peak], "centred")[0]], "exp")[0]
    weights = w.op("Where", [real, exp, _float(w, 0.0, "zero")], "unnormalised")[0]
    total = w.op("ReduceSum", [weights, _ints(w, [1], "axes")], "sum", keepdims=1)[0]
    total = w.op("Max", [total, _float(w, 1e-30, "tiny")], "safe_sum")[0]
    weights = w.op("Div", [weights, total], "weights")[0]
    weights = w.op("Unsqueeze", [weights, _ints(w, [-1], "axes")], "weights3")[0]
    weighted = w.op("Mul", [x, weights], "weighted")[0]
    return w.op("ReduceSum", [weighted, _ints(w, [1], "axes")], "attended", keepdims=0)[0]


def _step(w: _Writer, fn, args: list[str], mask: str | None) -> str | list[str]:
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
    if isinstance(fn, Sum):
        return w.op("Sum", args, "sum")[0]
    if isinstance(fn, Concat):
        return w.op("Concat", args, "concat", axis=fn.axis)[0]
    if isinstance(fn, NotEqual):
        value = w.constant(np.array(fn.value, np.float32), "value")
        equal = w.op("Equal", [args[0], value], "equal")[0]
        return w.op("Not", [equal], "not_equal")[0]
    if isinstance(fn, AnyOf):  # as float 0/1: every mask in the graph is float
        as_float = w.op("Cast", args, "as_float", to=TensorProto.FLOAT)[0]
        axis = -1 if fn.axis is None else fn.axis
        return w.op("ReduceMax", [as_float], "any", axes=[axis], keepdims=int(fn.keepdims))[0]
    if isinstance(fn, Recurrent):
        return _recurrent(w, [fn], args[0], mask)
    if isinstance(fn, Bidirectional):
        return _recurrent(w, [fn.forward, fn.backward], args[0], mask)
    if isinstance(fn, Conv1D):
        return _conv(w, fn, args[0])
    if isinstance(fn, RealFrames):
        return _real_frames(w, args[0])
    if isinstance(fn, MaskedMaxPool):
        return _masked_max_pool(w, fn, *args)
    if isinstance(fn, MaskedWindowStats):
        return _masked_window_stats(w, fn, *args)
    if isinstance(fn, MaskedStats):
        return _masked_stats(w, fn, *args)
    if isinstance(fn, AttentionPool):
        return _attention_pool(w, fn, *args)
    if isinstance(fn, Graph):
        return _graph(w, fn, args[0])
    raise UnsupportedForONNX(f"no ONNX form for {type(fn).__name__}")


def _graph(w: _Writer, graph: Graph, x: str) -> str:
    values = {graph.inputs[0]: x}
    for step in graph.steps:
        args = [values[i] for i in step.inputs]
        out = _step(w, step.fn, args, values[step.mask] if step.mask else None)
        for i, value in enumerate(out if isinstance(out, list) else [out]):
            values[output_key(step.name, i)] = value
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

"""A small ONNX graph runner in numpy: the shipped text encoder without ONNX Runtime.

The base install (``pip install .``) carries no ONNX Runtime: the ``cpu`` and ``gpu`` extras each
bring their own build of it (``onnxruntime`` / ``onnxruntime-gpu``), and the two cannot sit side
by side. The live engine still needs the text encoder (``text_encoder.onnx``, all-MiniLM-L6-v2,
int8) to condition on instrument names outside the model directory's cache. This module reads the
ONNX file itself (protobuf wire format, no ``onnx`` package) and runs its graph node by node with
numpy. It implements exactly the operators such a BERT-style export uses (standard opset 17 plus
ONNX Runtime's ``com.microsoft.MatMulNBits`` weight-only quantised MatMul); any other operator is
refused when the file is loaded, with its name.

It is slower than ONNX Runtime (each distinct name is encoded once and cached, so this does not
touch the hop) and agrees with it to float32 rounding (tests/test_text_fallback.py).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


class OnnxLiteError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- protobuf wire format
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = out = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def _fields(buf: bytes):
    """Yield ``(field number, wire type, value)``; length-delimited values as bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise OnnxLiteError(f"unsupported protobuf wire type {wt}")
        yield num, wt, v


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wt: int, v) -> list[int]:
    if wt == 0:
        return [_signed(v)]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(_signed(x))
    return out


# ONNX TensorProto.DataType -> numpy
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
           10: np.float16, 11: np.float64}


def _tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims, dtype, name, raw = [], 1, "", None
    floats, int32s, int64s, doubles = [], [], [], []
    for num, wt, v in _fields(buf):
        if num == 1:
            dims += _ints(wt, v)
        elif num == 2:
            dtype = v
        elif num == 4:
            floats += list(struct.unpack(f"<{len(v) // 4}f", v)) if wt == 2 else [struct.unpack("<f", v)[0]]
        elif num == 5:
            int32s += _ints(wt, v)
        elif num == 7:
            int64s += _ints(wt, v)
        elif num == 8:
            name = v.decode()
        elif num == 9:
            raw = v
        elif num == 10:
            doubles += list(struct.unpack(f"<{len(v) // 8}d", v)) if wt == 2 else [struct.unpack("<d", v)[0]]
        elif num == 13 or (num == 14 and v == 1):  # external_data / data_location EXTERNAL
            raise OnnxLiteError(f"tensor {name or '?'}: external data is not supported")
    if dtype not in _DTYPES:
        raise OnnxLiteError(f"tensor {name}: unsupported data type {dtype}")
    dt = _DTYPES[dtype]
    if raw is not None:
        arr = np.frombuffer(raw, dtype=np.dtype(dt).newbyteorder("<")).astype(dt)
    elif floats:
        arr = np.array(floats, dtype=dt)
    elif int64s:
        arr = np.array(int64s, dtype=dt)
    elif doubles:
        arr = np.array(doubles, dtype=dt)
    else:  # int32_data also carries bool, uint8, int8, int16, float16 (as bits)
        arr = np.array(int32s, dtype=np.int32)
        arr = arr.astype(np.uint16).view(np.float16) if dt is np.float16 else arr.astype(dt)
    return name, arr.reshape(dims)


def _attribute(buf: bytes):
    name, val, ints, floats = "", None, [], []
    for num, wt, v in _fields(buf):
        if num == 1:
            name = v.decode()
        elif num == 2:
            val = struct.unpack("<f", v)[0]
        elif num == 3:
            val = _signed(v)
        elif num == 4:
            val = v.decode()
        elif num == 5:
            val = _tensor(v)[1]
        elif num == 7:
            floats += list(struct.unpack(f"<{len(v) // 4}f", v)) if wt == 2 else [struct.unpack("<f", v)[0]]
        elif num == 8:
            ints += _ints(wt, v)
    if ints:
        val = ints
    elif floats:
        val = floats
    return name, val


class _Node:
    __slots__ = ("inputs", "outputs", "op", "domain", "attrs")

    def __init__(self, buf: bytes):
        self.inputs, self.outputs, self.op, self.domain, self.attrs = [], [], "", "", {}
        for num, _, v in _fields(buf):
            if num == 1:
                self.inputs.append(v.decode())
            elif num == 2:
                self.outputs.append(v.decode())
            elif num == 4:
                self.op = v.decode()
            elif num == 5:
                k, a = _attribute(v)
                self.attrs[k] = a
            elif num == 7:
                self.domain = v.decode()


def _value_name(buf: bytes) -> str:
    for num, _, v in _fields(buf):
        if num == 1:
            return v.decode()
    return ""


# ---------------------------------------------------------------------------- operators
def _axes(node, env, idx):
    if "axes" in node.attrs:
        return tuple(node.attrs["axes"])
    if len(node.inputs) > idx and node.inputs[idx]:
        return tuple(int(a) for a in env[node.inputs[idx]])
    return None


def _reduce(fn):
    def op(node, env, x, *_):
        axes = _axes(node, env, 1)
        keep = bool(node.attrs.get("keepdims", 1))
        if axes is None and node.attrs.get("noop_with_empty_axes", 0):
            return x
        return fn(x, axis=axes, keepdims=keep)
    return op


def _layer_norm(node, env, x, w, b=None):
    ax = node.attrs.get("axis", -1)
    axes = tuple(range(ax % x.ndim, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + np.float32(node.attrs.get("epsilon", 1e-5)))
    y = y * w
    return (y + b if b is not None else y).astype(x.dtype)


def _softmax(node, env, x):
    ax = node.attrs.get("axis", -1)
    e = np.exp(x - x.max(axis=ax, keepdims=True))
    return e / e.sum(axis=ax, keepdims=True)


def _reshape(node, env, x, shape):
    shape = [int(s) for s in shape]
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _unsqueeze(node, env, x, axes=None):
    axes = sorted(int(a) % (x.ndim + len(axes)) for a in (axes if axes is not None else node.attrs["axes"]))
    for a in axes:
        x = np.expand_dims(x, a)
    return x


def _slice(node, env, x, starts, ends, axes=None, steps=None):
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    sl = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        n = x.shape[a]
        s, e = int(max(min(s, n), -n - 1)), int(max(min(e, n), -n - 1))  # clamp int64 sentinels
        sl[a] = slice(s, e, st)
    return x[tuple(sl)]


def _gather(node, env, x, idx):
    return np.take(x, idx.astype(np.int64), axis=node.attrs.get("axis", 0))


def _gather_elements(node, env, x, idx):
    return np.take_along_axis(x, idx.astype(np.int64), axis=node.attrs.get("axis", 0))


def _dequantize(node, env, x, scale, zp=None):
    ax = node.attrs.get("axis", 1)
    x = x.astype(np.float32)
    if zp is not None:
        zp = zp.astype(np.float32)
    if scale.ndim == 1 and x.ndim > 1:  # per-axis
        shape = [1] * x.ndim
        shape[ax] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp is not None else None
    return ((x - zp) * scale if zp is not None else x * scale).astype(np.float32)


def _matmul_nbits(node, env, a, b, scales, zp=None, *_):
    """com.microsoft.MatMulNBits: B ``(N, blocks, blob)`` packed ``bits``-bit weights, one scale
    (and zero point, default ``2**(bits-1)``) per block of ``block_size`` along K."""
    k, n, bits, bs = (int(node.attrs[x]) for x in ("K", "N", "bits", "block_size"))
    if bits == 8:
        q = b.reshape(n, -1).astype(np.float32)
    elif bits == 4:
        lo, hi = b & 0x0F, b >> 4
        q = np.stack([lo, hi], axis=-1).reshape(n, -1).astype(np.float32)
    else:
        raise OnnxLiteError(f"MatMulNBits with bits={bits} is not supported")
    blocks = q.shape[1] // bs
    q = q.reshape(n, blocks, bs)
    if zp is None:
        z = np.float32(2 ** (bits - 1))
    elif zp.dtype == np.uint8 and bits == 8:
        z = zp.reshape(n, blocks, 1).astype(np.float32)
    else:
        raise OnnxLiteError("MatMulNBits with packed zero points is not supported")
    w = ((q - z) * scales.reshape(n, blocks, 1).astype(np.float32)).reshape(n, -1)[:, :k]
    return a @ w.T


def _cast(node, env, x):
    to = int(node.attrs["to"])
    if to not in _DTYPES:
        raise OnnxLiteError(f"Cast to data type {to} is not supported")
    return x.astype(_DTYPES[to])


def _constant_of_shape(node, env, shape):
    v = node.attrs.get("value")
    v = np.zeros(1, np.float32) if v is None else v.reshape(-1)
    return np.full([int(s) for s in shape], v[0], dtype=v.dtype)


def _expand(node, env, x, shape):
    return x * np.ones([int(s) for s in shape], dtype=x.dtype)


def _clip(node, env, x, lo=None, hi=None):
    return np.clip(x, lo if lo is not None else None, hi if hi is not None else None) \
        if lo is not None or hi is not None else x


def _where(node, env, c, a, b):
    return np.where(c, a, b).astype(np.result_type(a, b))


def _range(node, env, start, limit, delta):
    return np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))


def _binary(fn):
    def op(node, env, a, b):
        r = fn(a, b)
        if np.issubdtype(np.asarray(a).dtype, np.floating) and isinstance(r, np.ndarray) and r.dtype != bool:
            r = r.astype(np.asarray(a).dtype)
        return r
    return op


def _div(a, b):
    if np.issubdtype(np.asarray(a).dtype, np.integer):
        return (a // b).astype(np.asarray(a).dtype)
    return a / b


def _erf(x):
    try:
        from scipy.special import erf
    except ImportError as e:  # scipy is a base dependency; kept explicit for the error message
        raise OnnxLiteError("Erf needs scipy") from e
    return erf(x).astype(x.dtype)


OPS = {
    ("", "Add"): _binary(np.add), ("", "Sub"): _binary(np.subtract), ("", "Mul"): _binary(np.multiply),
    ("", "Div"): _binary(_div), ("", "Pow"): _binary(np.power), ("", "MatMul"): _binary(np.matmul),
    ("", "Equal"): lambda n, e, a, b: np.equal(a, b), ("", "Less"): lambda n, e, a, b: np.less(a, b),
    ("", "Greater"): lambda n, e, a, b: np.greater(a, b),
    ("", "GreaterOrEqual"): lambda n, e, a, b: np.greater_equal(a, b),
    ("", "And"): lambda n, e, a, b: np.logical_and(a, b), ("", "Not"): lambda n, e, x: np.logical_not(x),
    ("", "IsNaN"): lambda n, e, x: np.isnan(x), ("", "Sqrt"): lambda n, e, x: np.sqrt(x),
    ("", "Erf"): lambda n, e, x: _erf(x), ("", "Tanh"): lambda n, e, x: np.tanh(x),
    ("", "Neg"): lambda n, e, x: -x, ("", "Identity"): lambda n, e, x: x,
    ("", "Shape"): lambda n, e, x: np.array(x.shape, dtype=np.int64),
    ("", "Transpose"): lambda n, e, x: np.transpose(x, n.attrs.get("perm")),
    ("", "Flatten"): lambda n, e, x: x.reshape(int(np.prod(x.shape[:n.attrs.get("axis", 1)])), -1),
    ("", "Concat"): lambda n, e, *xs: np.concatenate([np.asarray(x) for x in xs], axis=n.attrs["axis"]),
    ("", "Constant"): lambda n, e: n.attrs["value"],
    ("", "ReduceSum"): _reduce(np.sum), ("", "ReduceMean"): _reduce(np.mean),
    ("", "ReduceL2"): _reduce(lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims))),
    ("", "Softmax"): _softmax, ("", "LayerNormalization"): _layer_norm, ("", "Reshape"): _reshape,
    ("", "Unsqueeze"): _unsqueeze, ("", "Slice"): _slice, ("", "Gather"): _gather,
    ("", "GatherElements"): _gather_elements, ("", "DequantizeLinear"): _dequantize, ("", "Cast"): _cast,
    ("", "ConstantOfShape"): _constant_of_shape, ("", "Expand"): _expand, ("", "Clip"): _clip,
    ("", "Where"): _where, ("", "Range"): _range,
    ("com.microsoft", "MatMulNBits"): _matmul_nbits,
}


class Graph:
    """``Graph(path).run({"input_ids": ..., "attention_mask": ...})`` -> list of outputs."""

    def __init__(self, path: str | Path):
        path = Path(path)
        try:
            buf = path.read_bytes()
        except OSError as e:
            raise OnnxLiteError(f"{path}: {e}") from e
        graph = None
        try:
            for num, _, v in _fields(buf):
                if num == 7:
                    graph = v
            if graph is None:
                raise OnnxLiteError(f"{path}: no graph (not an ONNX model file)")
            self.nodes: list[_Node] = []
            self.init: dict[str, np.ndarray] = {}
            self.inputs: list[str] = []
            self.outputs: list[str] = []
            for num, _, v in _fields(graph):
                if num == 1:
                    self.nodes.append(_Node(v))
                elif num == 5:
                    k, a = _tensor(v)
                    self.init[k] = a
                elif num == 11:
                    self.inputs.append(_value_name(v))
                elif num == 12:
                    self.outputs.append(_value_name(v))
        except (IndexError, UnicodeDecodeError, struct.error, ValueError) as e:
            raise OnnxLiteError(f"{path}: not a readable ONNX file ({e})") from e
        unknown = sorted({f"{n.domain + '.' if n.domain else ''}{n.op}" for n in self.nodes
                          if (n.domain if n.domain != "ai.onnx" else "", n.op) not in OPS})
        if unknown:
            raise OnnxLiteError(f"{path}: operators not supported without ONNX Runtime: {', '.join(unknown)} "
                                f"(install the 'cpu' extra: pip install '.[cpu]')")
        self.inputs = [i for i in self.inputs if i not in self.init]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        env: dict[str, np.ndarray] = dict(self.init)
        env.update(feeds)
        for n in self.nodes:
            args = [env[i] if i else None for i in n.inputs]
            while args and args[-1] is None:
                args.pop()
            res = OPS[(n.domain if n.domain != "ai.onnx" else "", n.op)](n, env, *args)
            outs = res if isinstance(res, tuple) else (res,)
            for name, val in zip(n.outputs, outs):
                env[name] = np.asarray(val)
        return [env[o] for o in self.outputs]

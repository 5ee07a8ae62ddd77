"""The causal beat and downbeat network, in numpy: log-mel frames in, beat activations out. No torch.

What it gives the rest of the engine is one small type::

    net = BeatNet.load(path)                     # a weights file written by `python -m training beatnet export`
    acts = net.offline(logmel)                   # (80, T) raw log-mel at 100 fps -> BeatActivations
    s = net.stream(time_offset=0.0)              # streaming: state kept between calls
    acts = s.push(logmel_chunk)                  # (80, t) new frames -> the activation frames they complete
    s.reset()                                    # forget everything (a new stream)

:class:`BeatActivations` holds ``beat (T,)`` and ``downbeat (T,)``, float32 probabilities in
[0, 1] at ``fps`` = 50 frames a second; frame ``i`` is at ``t0 + i / fps`` seconds. A beat tracker
(``engine.beats.CausalBeatTracker``) consumes ``beat``; ``downbeat`` is the probability that the
frame holds the first beat of a bar (a meter tracker may use it, or ignore it). A network with a
tempo output (``BeatNetArch.tempo_bins`` K > 0) adds ``tempo (T, K)``: per frame, a distribution
over K tempo classes, log-spaced from ``tempo_min_bpm`` to ``tempo_max_bpm``
(:meth:`BeatNetArch.tempo_bpm`), trained on the local beat period of the tempo map; the tracker can
weigh its tempo states by it (``tempo_power``).

Timing. Activation frame ``m`` (counted from the stream's first log-mel frame) is computed from
log-mel frames ``<= 2m + 1`` only, and is placed at the centre of its two frames, ``2m`` and
``2m + 1``: ``time_offset + FrontEndConfig.frames_centre_s(2) + m / 50`` (17.5 ms after the
stream's first sample for frame 0), the same convention as the ViT beat head's activations.
``push`` returns the frames completed by the new log-mel (an odd frame waits for its partner),
so a stream fed whole, in chunks or frame by frame gives the same activations (within float32
rounding of the matrix products, far below 1e-5).

The network (weights from ``training/beatnet.py``, which has the torch twin of this forward):

1. ``z = (logmel - mean) / std`` per mel bin (the training set's statistics, in the file);
2. features ``[z_t, max(0, z_t - z_{t-1})]``: 160 channels at 100 fps (a half-wave rectified
   spectral difference beside the spectrum; the first frame of a stream is its own predecessor);
3. a strided causal convolution: ``front_kernel`` (4) frames ending at frame ``2m + 1`` ->
   ``channels`` at 50 fps, ELU;
4. residual blocks, one per dilation ``d``: ``x + W_mix ELU(causal_conv_k(x, dilation d))``
   (kernel 3; dilations 1, 2, 4, ... 64: a receptive field of 255 frames, 5.1 s);
5. a 1x1 head on ``ELU(x)`` -> 2 logits (beat, downbeat) -> sigmoid; with ``tempo_bins`` K, K more
   logits -> softmax over the K tempo classes.

Every causal convolution is padded with zeros on the left, so the streaming state starts at zero
and the first activations of a stream equal the offline ones exactly.

The weights file (``.npz``): arrays named as the torch module's ``state_dict`` (``front.weight``,
``blocks.0.conv.weight``, ...), ``norm_mean`` / ``norm_std`` (80,), and ``meta``: a JSON string
``{"format": "stemjepa-beatnet", "version": 1, "arch": {...}, "frontend": {...}, "train": {...}}``.
docs/model_dir.md says where a model directory keeps it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .frontend import FrontEndConfig

FORMAT = "stemjepa-beatnet"
VERSION = 1
FILENAME = "beatnet.npz"  # its name in a model directory (docs/model_dir.md)
OUTPUTS = ("beat", "downbeat")


class BeatNetError(ValueError):
    """A weights file that cannot be used; the message says why."""


@dataclass(frozen=True)
class BeatActivations:
    """Beat and downbeat probabilities at ``fps`` Hz: ``beat (T,)``, ``downbeat (T,)`` float32
    in [0, 1] (``downbeat`` None when a source has none); frame ``i`` is at ``t0 + i / fps`` s."""

    beat: np.ndarray
    downbeat: np.ndarray | None = None
    t0: float = 0.0
    fps: float = 50.0
    tempo: np.ndarray | None = None  # (T, K) tempo-class probabilities (rows sum to 1), or None
    tempo_bpm: np.ndarray | None = None  # (K,) BPM at the centre of each tempo class

    def __len__(self) -> int:
        return int(len(self.beat))

    def times(self) -> np.ndarray:
        """``(T,)`` seconds of every frame."""
        return self.t0 + np.arange(len(self.beat)) / self.fps

    @staticmethod
    def concat(parts: list["BeatActivations"]) -> "BeatActivations":
        """Consecutive pieces of one stream joined (the first piece's ``t0``)."""
        if not parts:
            return BeatActivations(np.zeros(0, np.float32), np.zeros(0, np.float32))
        db = None if any(p.downbeat is None for p in parts) else np.concatenate([p.downbeat for p in parts])
        tp = None if any(p.tempo is None for p in parts) else np.concatenate([p.tempo for p in parts])
        return BeatActivations(np.concatenate([p.beat for p in parts]), db, parts[0].t0, parts[0].fps, tp,
                               parts[0].tempo_bpm if tp is not None else None)


@dataclass(frozen=True)
class BeatNetArch:
    """The network's shape (stored in the weights file and the training checkpoint)."""

    n_mels: int = 80
    channels: int = 32
    front_kernel: int = 4  # log-mel frames per activation frame's first convolution (ending at 2m + 1)
    kernel: int = 3
    dilations: tuple = (1, 2, 4, 8, 16, 32, 64)
    flux: bool = True  # add the half-wave rectified frame difference as 80 more input channels
    tempo_bins: int = 0  # K tempo classes after beat and downbeat (0: no tempo output)
    tempo_min_bpm: float = 50.0  # centre of the first tempo class
    tempo_max_bpm: float = 240.0  # centre of the last (the classes are log-spaced between)

    def to_dict(self) -> dict:
        d = {"n_mels": self.n_mels, "channels": self.channels, "front_kernel": self.front_kernel,
             "kernel": self.kernel, "dilations": list(self.dilations), "flux": self.flux}
        if self.tempo_bins:
            d.update(tempo_bins=self.tempo_bins, tempo_min_bpm=self.tempo_min_bpm, tempo_max_bpm=self.tempo_max_bpm)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BeatNetArch":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "dilations" in known:
            known["dilations"] = tuple(int(x) for x in known["dilations"])
        return cls(**known)

    @property
    def in_channels(self) -> int:
        return self.n_mels * (2 if self.flux else 1)

    @property
    def n_outputs(self) -> int:
        """Logits of the head: beat, downbeat and the ``tempo_bins`` tempo classes."""
        return len(OUTPUTS) + int(self.tempo_bins)

    def tempo_bpm(self) -> np.ndarray:
        """``(K,)`` BPM at the centre of each tempo class (log-spaced; empty without a tempo output)."""
        if not self.tempo_bins:
            return np.zeros(0)
        return np.geomspace(self.tempo_min_bpm, self.tempo_max_bpm, int(self.tempo_bins))

    def receptive_field(self) -> int:
        """Activation frames (50 Hz) an output depends on, itself included."""
        return 1 + sum((self.kernel - 1) * d for d in self.dilations) + (self.front_kernel - 1) // 2

    def flops_per_frame(self) -> float:
        """Multiply-adds x 2 of one 50-Hz activation frame (the streaming cost: 8 frames a 160-ms hop)."""
        c = self.channels
        front = c * self.in_channels * self.front_kernel
        block = c * c * self.kernel + c * c
        return 2.0 * (front + len(self.dilations) * block + self.n_outputs * c)

    def n_params(self) -> int:
        c, k = self.channels, self.kernel
        front = c * self.in_channels * self.front_kernel + c
        block = c * c * k + c + c * c + c
        return front + len(self.dilations) * block + self.n_outputs * (c + 1)


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _taps(w: np.ndarray) -> np.ndarray:
    """``(C_out, C_in, k)`` convolution weights -> ``(C_out, k * C_in)``, tap-major, to multiply
    the stacked shifted inputs in one product."""
    return np.ascontiguousarray(w.transpose(0, 2, 1).reshape(w.shape[0], -1))


class BeatNet:
    """The weights and the forward pass; :meth:`offline` for a whole log-mel, :meth:`stream` for
    live use (see the module docstring)."""

    def __init__(self, arrays: dict, meta: dict, path: str | None = None):
        if meta.get("format") != FORMAT:
            raise BeatNetError(f"{path or 'weights'}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("version") != VERSION:
            raise BeatNetError(f"{path or 'weights'}: version {meta.get('version')!r}, this code reads {VERSION}")
        self.path = path
        self.meta = meta
        self.arch = BeatNetArch.from_dict(meta.get("arch", {}))
        self.frontend = FrontEndConfig.from_dict(meta.get("frontend", {}))
        a = self.arch
        try:
            self.mean = np.asarray(arrays["norm_mean"], np.float32).reshape(a.n_mels)
            self.inv_std = (1.0 / np.asarray(arrays["norm_std"], np.float32)).reshape(a.n_mels)
            self.front_w = _taps(np.asarray(arrays["front.weight"], np.float32))
            self.front_b = np.asarray(arrays["front.bias"], np.float32)[:, None]
            self.blocks = []
            for i, d in enumerate(a.dilations):
                self.blocks.append((int(d), _taps(np.asarray(arrays[f"blocks.{i}.conv.weight"], np.float32)),
                                    np.asarray(arrays[f"blocks.{i}.conv.bias"], np.float32)[:, None],
                                    np.asarray(arrays[f"blocks.{i}.mix.weight"], np.float32)[:, :, 0].copy(),
                                    np.asarray(arrays[f"blocks.{i}.mix.bias"], np.float32)[:, None]))
            self.head_w = np.asarray(arrays["head.weight"], np.float32)[:, :, 0].copy()
            self.head_b = np.asarray(arrays["head.bias"], np.float32)[:, None]
        except (KeyError, ValueError) as e:
            raise BeatNetError(f"{path or 'weights'}: arrays do not match the architecture {a.to_dict()} ({e})") from e
        want = (a.channels, a.front_kernel * a.in_channels)
        if self.front_w.shape != want or self.head_w.shape != (a.n_outputs, a.channels):
            raise BeatNetError(f"{path or 'weights'}: front {self.front_w.shape} / head {self.head_w.shape} do not "
                               f"match the architecture {a.to_dict()}")
        self.fps = self.frontend.sample_rate / self.frontend.hop / 2.0  # 50 Hz
        self.centre_s = self.frontend.frames_centre_s(2)
        self.tempo_bpm = a.tempo_bpm() if a.tempo_bins else None  # (K,) or None

    # ---------------------------------------------------------------------------------- files
    @classmethod
    def load(cls, path: str | Path) -> "BeatNet":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise BeatNetError(f"{path}: not a readable beat-network weights file ({e})") from e
        try:
            meta = json.loads(str(arrays.pop("meta")))
        except (KeyError, ValueError) as e:
            raise BeatNetError(f"{path}: no readable 'meta' entry ({e})") from e
        return cls(arrays, meta, str(path))

    @staticmethod
    def save(path: str | Path, arrays: dict, meta: dict) -> None:
        """Write a weights file (the training side calls this with its state_dict as numpy)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "version": VERSION, **{k: v for k, v in meta.items() if k not in ("format", "version")}}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(doc)), **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
        tmp.replace(path)

    # ---------------------------------------------------------------------------------- forward
    def stream(self, time_offset: float = 0.0) -> "BeatNetStream":
        return BeatNetStream(self, time_offset)

    def offline(self, logmel: np.ndarray, time_offset: float = 0.0) -> BeatActivations:
        """``(n_mels, T)`` raw log-mel of a whole stream -> its ``T // 2`` activation frames."""
        return self.stream(time_offset).push(logmel)

    def from_audio(self, samples: np.ndarray, time_offset: float = 0.0) -> BeatActivations:
        """Mono samples at the front end's rate -> activations (the engine's own log-mel)."""
        from .frontend import LogMel

        return self.offline(LogMel(self.frontend).offline(np.asarray(samples, np.float64)), time_offset)


class BeatNetStream:
    """The network over a stream: ``push`` new log-mel frames, get the activation frames they
    complete. The state is the previous log-mel frame, the strided convolution's pending frames
    and every block's last ``(kernel - 1) * dilation`` inputs; ``reset`` clears it."""

    def __init__(self, net: BeatNet, time_offset: float = 0.0):
        self.net = net
        self.reset(time_offset)

    def reset(self, time_offset: float | None = None) -> None:
        if time_offset is not None:
            self.time_offset = float(time_offset)
        a, n = self.net.arch, self.net
        self._prev: np.ndarray | None = None  # last normalised log-mel frame
        self._fbuf = np.zeros((a.in_channels, a.front_kernel - 2), np.float32)  # left padding + pending frames
        self._hist = [np.zeros((a.channels, (a.kernel - 1) * d), np.float32) for d, *_ in n.blocks]
        self.frames_in = 0  # log-mel frames pushed since reset
        self.frames_out = 0  # activation frames returned since reset

    def push(self, logmel: np.ndarray) -> BeatActivations:
        net, a = self.net, self.net.arch
        x = np.asarray(logmel, np.float32)
        if x.ndim != 2 or x.shape[0] != a.n_mels:
            raise ValueError(f"BeatNetStream.push expects ({a.n_mels}, t) log-mel, got shape {x.shape}")
        t0 = self.time_offset + net.centre_s + self.frames_out / net.fps
        self.frames_in += x.shape[1]
        if x.shape[1]:
            z = (x - net.mean[:, None]) * net.inv_std[:, None]
            if a.flux:
                prev = np.concatenate([(z[:, :1] if self._prev is None else self._prev[:, None]), z[:, :-1]], axis=1)
                z_feat = np.concatenate([z, np.maximum(z - prev, 0.0)], axis=0)
            else:
                z_feat = z
            self._prev = z[:, -1].copy()
            self._fbuf = np.concatenate([self._fbuf, z_feat], axis=1)
        k0 = a.front_kernel
        n = (self._fbuf.shape[1] - (k0 - 2)) // 2  # activation frames now complete
        if n <= 0:
            empty = np.zeros(0, np.float32)
            tempo = np.zeros((0, a.tempo_bins), np.float32) if a.tempo_bins else None
            return BeatActivations(empty, empty.copy(), t0, net.fps, tempo, net.tempo_bpm)
        buf = self._fbuf
        stack = np.concatenate([buf[:, j:j + 2 * n:2] for j in range(k0)], axis=0)  # (k0 * C_in, n)
        h = _elu(net.front_w @ stack + net.front_b)
        self._fbuf = buf[:, 2 * n:].copy()
        for i, (d, w, b, wm, bm) in enumerate(net.blocks):
            hb = np.concatenate([self._hist[i], h], axis=1)  # (C, (k - 1) d + n)
            k = a.kernel
            stack = np.concatenate([hb[:, j * d:j * d + n] for j in range(k)], axis=0)
            h = h + wm @ _elu(w @ stack + b) + bm
            keep = (k - 1) * d
            if keep:
                self._hist[i] = hb[:, hb.shape[1] - keep:].copy()
        logits = net.head_w @ _elu(h) + net.head_b
        y = _sigmoid(logits[:len(OUTPUTS)]).astype(np.float32)
        tempo = None
        if a.tempo_bins:
            z = logits[len(OUTPUTS):]
            e = np.exp(z - z.max(axis=0, keepdims=True))
            tempo = np.ascontiguousarray((e / e.sum(axis=0, keepdims=True)).T.astype(np.float32))  # (n, K)
        self.frames_out += n
        return BeatActivations(np.ascontiguousarray(y[0]), np.ascontiguousarray(y[1]), t0, net.fps, tempo,
                               net.tempo_bpm)


def find_beatnet(model_dir) -> Path | None:
    """The beat network of a model directory, or None: the manifest's ``files["beatnet"]`` entry
    (sha256-checked with the other files when the manifest loads) of a full (built) directory, or
    the ``beatnet.npz`` a packed directory lists in ``packed.json``. ``model_dir``: a path or an
    ``engine.manifest.Manifest`` (anything else, None included: None)."""
    from .manifest import PACKED

    if model_dir is None:
        return None
    if not isinstance(model_dir, (str, Path)):  # a Manifest (or a stand-in without files: None)
        file = getattr(model_dir, "file", None)
        return file("beatnet") if callable(file) else None
    root = Path(model_dir)
    m = root / "manifest.json"
    if m.is_file():
        try:
            e = json.loads(m.read_text()).get("files", {}).get("beatnet")
        except (OSError, ValueError):
            return None
        return None if e is None else root / e["path"]
    p = root / PACKED
    if p.is_file():
        try:
            files = json.loads(p.read_text()).get("files", {})
        except (OSError, ValueError):
            return None
        return root / files[FILENAME]["path"] if FILENAME in files else None
    return None

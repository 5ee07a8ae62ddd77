"""``python -m training beatnet``: train the causal beat and downbeat network, export its weights.

    python -m training beatnet fit data=/work/data/varied out=runs/beatnet [key=value ...] [--config FILE]
    python -m training beatnet export runs/beatnet/final.pt engine/assets/model/beatnet.npz

The network is the torch twin of ``engine.beatnet`` (whose docstring describes it; a test holds
the two forwards equal): log-mel at 100 fps in, two sigmoid activations per 50-Hz frame out (beat,
downbeat), strictly causal, a receptive field of 5.1 s with the default dilations.

Training examples (one ``numpy`` generator per step, ``default_rng([seed, step])``, so a resumed
run draws exactly what an unbroken one would):

* a random crop of ``seconds`` (10 s) of a track of the split with beats: the mix of its stems (with
  probability ``p_stem_drop`` only some of them), the targets from its ``beats`` and ``downbeats``
  (``training.losses.widen_beat_targets``: 1 on the frame, 0.5 on the ``widen`` frames beside it);
* with probability ``p_gap`` a stretch at the start or the end silenced (music starts or stops
  inside the crop; the beats there are dropped), with ``p_noise`` noise added at 5-40 dB below it;
* with probability ``p_negative`` no music at all, zero targets: digital silence, a faint noise
  floor, white or pink noise, a steady tone, a sustained chord or mains hum -- the "no beat" the
  live tracker must see as such;
* every example at a random gain of ``gain_min_db`` .. ``gain_max_db``.

Loss: binary cross-entropy per output (``pos_weight`` on positives), downbeats weighted by
``downbeat_weight`` and masked for tracks that have none; with a tempo output (``tempo_bins`` K),
``tempo_weight`` x the cross-entropy of its K classes against the local beat period of the tempo
map (a Gaussian of ``tempo_sigma`` classes around it; frames outside the beats masked, see
:func:`tempo_loss`); optionally hard negatives
(``offbeat_weight``: the half-beat points between beats, for the beat output;
``nondownbeat_weight``: the beats that are not downbeats, for the downbeat output). The validation
loss is always the plain BCE. AdamW; learning rate from
``training.schedules.lr_at`` (warm-up, cosine; a pure function of the step). The checkpoint
(``OUT/last.pt`` every ``ckpt_every`` steps, ``OUT/final.pt`` at the end) holds the config, the
architecture, the front end, the normalisation (per mel bin), the weights, the optimiser and the
step: a run resumes exactly from ``last.pt``, and the file rebuilds the network alone. ``init``
starts a new run from another run's checkpoint: every tensor of the same name and shape is
copied (the normalisation too), and the head's beat and downbeat rows, so a tempo output can be
added to a trained network
(:func:`load_checkpoint`). TensorBoard scalars go to ``OUT/tb``, one JSON line per step to
``OUT/log.jsonl``.
"""
from __future__ import annotations

import json
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.beatnet import OUTPUTS, BeatNet, BeatNetArch
from engine.cli import CliError, Parser, guarded
from engine.frontend import FrontEndConfig

from .features import TorchLogMel
from .losses import widen_beat_targets
from .schedules import lr_at

CKPT_FORMAT = "stemjepa-beatnet-checkpoint"
CKPT_VERSION = 1
NEGATIVE_KINDS = ("silence", "floor", "white", "pink", "tone", "chord", "hum")


# ---------------------------------------------------------------------------------------------- model
class Block(nn.Module):
    """``x + mix(ELU(causal dilated conv(x)))``."""

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.mix = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(self.drop(F.elu(self.conv(F.pad(x, (self.pad, 0))))))


class BeatNetTorch(nn.Module):
    """The network of ``engine.beatnet`` in torch. ``forward((B, n_mels, T) raw log-mel)`` ->
    ``(B, 2 + K, T // 2)`` logits (beat, downbeat, then the K tempo classes if any)."""

    def __init__(self, arch: BeatNetArch, dropout: float = 0.0):
        super().__init__()
        self.arch = arch
        self.register_buffer("norm_mean", torch.zeros(arch.n_mels))
        self.register_buffer("norm_std", torch.ones(arch.n_mels))
        self.front = nn.Conv1d(arch.in_channels, arch.channels, arch.front_kernel, stride=2)
        self.blocks = nn.ModuleList(Block(arch.channels, arch.kernel, d, dropout) for d in arch.dilations)
        self.head = nn.Conv1d(arch.channels, arch.n_outputs, 1)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        z = (logmel - self.norm_mean[:, None]) / self.norm_std[:, None]
        if self.arch.flux:
            prev = torch.cat([z[..., :1], z[..., :-1]], dim=-1)
            z = torch.cat([z, F.relu(z - prev)], dim=1)
        h = F.elu(self.front(F.pad(z, (self.arch.front_kernel - 2, 0))))
        for b in self.blocks:
            h = b(h)
        return self.head(F.elu(h))

    def numpy_arrays(self) -> dict:
        """The weights as the engine's file stores them (state_dict names, float32)."""
        return {k: v.detach().cpu().float().numpy() for k, v in self.state_dict().items()}


# ---------------------------------------------------------------------------------------------- config
@dataclass
class BeatNetConfig:
    data: str = "/work/data/varied"  # a dataset root, or several separated by commas (one pool of tracks)
    split: str = "train"
    out: str = "runs/beatnet"
    # architecture (engine.beatnet.BeatNetArch)
    channels: int = 32
    kernel: int = 3
    front_kernel: int = 4
    dilations: str = "1,2,4,8,16,32,64"
    flux: bool = True
    dropout: float = 0.1
    # optimisation
    steps: int = 6000
    batch_size: int = 16
    seconds: float = 10.0  # crop length
    lr: float = 2e-3
    min_lr: float = 2e-5
    warmup: int = 200
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    # targets and loss
    widen: int = 1
    pos_weight: float = 2.0
    downbeat_weight: float = 1.0
    # hard negatives (octave-aware targets): an extra BCE towards 0, weighted by these, on the beat
    # output at the half-beat points between two beats, and on the downbeat output at the beats
    # that are not downbeats (0: off, the plain BCE of every other frame only)
    offbeat_weight: float = 0.0
    nondownbeat_weight: float = 0.0
    # tempo output: K log-spaced classes (engine.beatnet.BeatNetArch.tempo_bpm), cross-entropy weight,
    # width of the target (classes)
    tempo_bins: int = 0
    tempo_weight: float = 0.0
    tempo_sigma: float = 1.0
    init: str = ""  # a beatnet checkpoint to start a new run from (module docstring)
    # augmentation
    gain_min_db: float = -30.0
    gain_max_db: float = 6.0
    p_negative: float = 0.12
    p_gap: float = 0.12
    p_noise: float = 0.2
    p_stem_drop: float = 0.3
    stem_keep: float = 0.6
    # bookkeeping
    ckpt_every: int = 100
    log_every: int = 10
    val_every: int = 500  # validation loss on fixed crops of the data's "validation" split (if any)
    val_batches: int = 2
    seed: int = 0
    threads: int = 1
    max_tracks: int = 0
    write_cache: bool = False  # write the sampler's envelope caches into the dataset (False: read only)
    norm_samples: int = 64
    stop_after: int = 0  # stop after this many steps in this invocation (resume later)
    stop_minutes: float = 0.0  # stop (checkpointing) once this invocation has trained this long

    def arch(self) -> BeatNetArch:
        return BeatNetArch(channels=self.channels, kernel=self.kernel, front_kernel=self.front_kernel,
                           dilations=tuple(int(d) for d in str(self.dilations).split(",") if d.strip()),
                           flux=self.flux, tempo_bins=self.tempo_bins)


def _typed(name: str, value, default):
    """A config value of the default's type, from TOML or ``key=value`` text."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise CliError(f"{name}={value!r}: {name} takes a {type(default).__name__}",
                       "'python -m training beatnet fit --help' lists every key") from None


def load_config(path: str | None, overrides: list[str]) -> BeatNetConfig:
    """TOML file (optional) then ``key=value`` overrides; unknown keys and bad values are refused."""
    defaults = {f.name: f.default for f in fields(BeatNetConfig)}
    values: dict = {}
    if path:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise CliError(f"--config {path}: {e}", "give a TOML file of beatnet keys") from None
    for ov in overrides:
        k, eq, v = ov.partition("=")
        if not eq:
            raise CliError(f"{ov!r}: overrides look like key=value", "e.g. steps=100 out=runs/beatnet_try")
        values[k.lstrip("-").replace("-", "_")] = v
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise CliError(f"unknown beatnet keys {unknown}", f"known: {', '.join(defaults)}")
    cfg = BeatNetConfig(**{k: _typed(k, v, defaults[k]) for k, v in values.items()})
    if cfg.seconds <= 1.0 or cfg.batch_size < 1 or cfg.steps < 1:
        raise CliError("need seconds > 1, batch_size >= 1, steps >= 1", "see --help")
    cfg.arch()  # the dilations parse
    return cfg


# ---------------------------------------------------------------------------------------------- data
def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / (x.std() + 1e-12)


def negative_example(rng: np.random.Generator, n: int, sr: int = 16000, kind: str | None = None) -> np.ndarray:
    """``(n,)`` float32 audio without a beat: one of :data:`NEGATIVE_KINDS` at a random level."""
    kind = kind or NEGATIVE_KINDS[int(rng.integers(len(NEGATIVE_KINDS)))]
    t = np.arange(n) / sr
    level = 10.0 ** (rng.uniform(-45.0, -10.0) / 20.0)  # RMS
    if kind == "silence":
        return np.zeros(n, np.float32)
    if kind == "floor":
        x, level = rng.standard_normal(n), 10.0 ** (rng.uniform(-100.0, -65.0) / 20.0)
    elif kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = _pink(rng, n)
    elif kind == "tone":
        f = np.exp(rng.uniform(np.log(40.0), np.log(4000.0)))
        x = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    elif kind == "chord":
        root = np.exp(rng.uniform(np.log(80.0), np.log(600.0)))
        x = np.zeros(n)
        for semis in rng.choice([0, 3, 4, 7, 10, 12, 16], size=int(rng.integers(2, 5)), replace=False):
            f = root * 2.0 ** (semis / 12.0)
            for h in range(1, 5):
                if f * h < sr / 2:
                    x += np.sin(2 * np.pi * f * h * t + rng.uniform(0, 2 * np.pi)) / h
        start = int(rng.uniform(0, 0.5) * n)  # the chord may enter inside the crop, once
        env = np.clip((np.arange(n) - start) / max(1.0, rng.uniform(0.005, 1.0) * sr), 0.0, 1.0)
        x *= env
    elif kind == "hum":
        f0 = 50.0 if rng.random() < 0.5 else 60.0
        x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 8))
    else:
        raise ValueError(f"unknown negative kind {kind!r}")
    x = np.asarray(x, np.float64)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12) * level).astype(np.float32)


class BeatExamples:
    """The training examples of the module docstring, from a :class:`training.data.sampler.StemSampler`
    or a :class:`training.data.sampler.PooledBeatSampler` (anything with ``S`` and ``sample_beats``)."""

    def __init__(self, sampler, cfg: BeatNetConfig, fe: FrontEndConfig | None = None):
        self.sampler, self.cfg = sampler, cfg
        self.fe = fe or FrontEndConfig()
        self.S = sampler.S
        self.n_frames = self.fe.n_frames(self.S)
        self.n_act = self.n_frames // 2
        self.fps = self.fe.sample_rate / self.fe.hop / 2.0
        self.offset_s = self.fe.frames_centre_s(2)  # centre of activation frame 0

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """``(audio (S,), targets (5, n_act), downbeat mask)``. Rows of the targets: beat, downbeat
        (widened, 0..1), the hard-negative masks (0/1): half-beat points between two beats,
        beats that are not downbeats (only where the track has downbeats); and the local tempo
        (BPM, 0 where none: :func:`local_tempo`)."""
        c, n, sr = self.cfg, self.S, self.fe.sample_rate
        y = np.zeros((5, self.n_act), np.float32)
        if rng.random() < c.p_negative:
            return negative_example(rng, n, sr), y, 1.0
        it = self.sampler.sample_beats(rng, keep=c.stem_keep if rng.random() < c.p_stem_drop else 1.0)
        x = it["mix"]
        beats, downs = it["beats"], it["downbeats"]
        if rng.random() < c.p_gap:  # music starts or stops inside the crop
            cut = int(rng.uniform(0.1, 0.6) * n)
            if rng.random() < 0.5:
                x[:cut] = 0.0
                keep = lambda b: b[b >= cut / sr]  # noqa: E731
            else:
                x[n - cut:] = 0.0
                keep = lambda b: b[b < (n - cut) / sr]  # noqa: E731
            beats = keep(beats)
            downs = None if downs is None else keep(downs)
        if rng.random() < c.p_noise:
            rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) + 1e-9
            x = x + (rng.standard_normal(n) * rms * 10.0 ** (-rng.uniform(5.0, 40.0) / 20.0)).astype(np.float32)
        x = x * np.float32(10.0 ** (rng.uniform(c.gain_min_db, c.gain_max_db) / 20.0))
        y[0] = widen_beat_targets(beats - self.offset_s, self.n_act, self.fps, c.widen).numpy()
        b = np.sort(np.asarray(beats, np.float64))
        if len(b) > 1:
            y[2] = widen_beat_targets(0.5 * (b[1:] + b[:-1]) - self.offset_s, self.n_act, self.fps, c.widen).numpy() > 0
        if downs is not None:
            y[1] = widen_beat_targets(downs - self.offset_s, self.n_act, self.fps, c.widen).numpy()
            d = np.asarray(downs, np.float64)
            # a beat more than 70 ms from every downbeat is not a downbeat
            off = b[np.abs(b[:, None] - d[None, :]).min(1) > 0.07] if len(d) else b
            y[3] = widen_beat_targets(off - self.offset_s, self.n_act, self.fps, c.widen).numpy() > 0
        y[2] *= y[0] == 0
        y[3] *= y[1] == 0
        y[4] = local_tempo(b, self.offset_s + np.arange(self.n_act) / self.fps)
        return x.astype(np.float32), y, 0.0 if downs is None else 1.0

    def batch(self, rng: np.random.Generator, size: int) -> dict:
        xs, ys, ms = zip(*(self.example(rng) for _ in range(size)))
        return {"audio": torch.from_numpy(np.stack(xs)), "targets": torch.from_numpy(np.stack(ys)),
                "downbeat_mask": torch.tensor(ms, dtype=torch.float32)}


def local_tempo(beats: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``(T,)`` BPM of the beat period around each time (s): ``60 / (b[j+1] - b[j])`` between two
    beats, the first (last) period for up to one period before the first (after the last) beat,
    0 elsewhere and with fewer than two beats."""
    b = np.sort(np.asarray(beats, np.float64))
    out = np.zeros(len(times), np.float32)
    if len(b) < 2:
        return out
    per = np.diff(b)
    j = np.clip(np.searchsorted(b, times, side="right") - 1, 0, len(per) - 1)
    ok = (times >= b[0] - per[0]) & (times < b[-1] + per[-1])
    out[ok] = 60.0 / per[j[ok]]
    return out


def tempo_loss(logits: torch.Tensor, bpm: torch.Tensor, arch: BeatNetArch, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the tempo classes and the share of frames whose likeliest class is within
    one class of the target, over the frames with a tempo in the classes' range.

    ``logits (B, K, T)`` (the head's tempo rows); ``bpm (B, T)`` (0: no target). The target of a
    frame is a Gaussian over the classes' log2 centres, ``sigma`` classes wide, around its tempo."""
    c = torch.log2(torch.as_tensor(arch.tempo_bpm(), dtype=logits.dtype, device=logits.device))  # (K,)
    step = float(c[1] - c[0]) if len(c) > 1 else 1.0
    ok = (bpm >= arch.tempo_min_bpm / 2 ** (step / 2)) & (bpm <= arch.tempo_max_bpm * 2 ** (step / 2))
    if not bool(ok.any()):
        z = logits.sum() * 0.0
        return z, z.detach()
    lt = torch.log2(bpm.clamp_min(1.0)).clamp(float(c[0]), float(c[-1]))  # (B, T); masked frames: any finite value
    q = torch.exp(-0.5 * ((c[None, :, None] - lt[:, None, :]) / (step * sigma)) ** 2)  # (B, K, T)
    q = q / q.sum(1, keepdim=True)
    ce = -(q * F.log_softmax(logits, dim=1)).sum(1)  # (B, T)
    m = ok.to(logits.dtype)
    loss = torch.where(ok, ce, torch.zeros_like(ce)).sum() / m.sum()
    hit = ((logits.argmax(1).to(logits.dtype) - (lt - c[0]) / step).abs() <= 1.0).to(logits.dtype)
    return loss, ((hit * m).sum() / m.sum()).detach()


def estimate_norm(sampler, n: int, seed: int) -> dict:
    """Per-mel-bin mean and std of the log-mel of ``n`` random full mixes."""
    rng = np.random.default_rng([seed, 424242])
    lm = TorchLogMel()
    with torch.no_grad():
        m = torch.cat([lm(torch.from_numpy(sampler.sample_beats(rng)["mix"])[None])[0] for _ in range(n)], dim=1)
    return {"mean": m.mean(1).tolist(), "std": m.std(1).clamp_min(1e-3).tolist()}


def beat_losses(logits: torch.Tensor, targets: torch.Tensor, downbeat_mask: torch.Tensor,
                pos_weight: float, offbeat_weight: float = 0.0,
                nondownbeat_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean BCE of the beat output, and of the downbeat output over the examples that have downbeats.

    ``logits (B, 2, T)``; ``targets (B, 4, T)`` as :meth:`BeatExamples.example` makes them. With the
    hard-negative weights, each output also pays ``weight x`` the mean BCE towards 0 over its mask
    (half-beat points for beats, non-downbeat beats for downbeats): the octave and the bar phase
    are then what the loss asks for, not only the onsets."""
    w = torch.tensor(pos_weight, device=logits.device)
    beat = F.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 0], pos_weight=w)
    per = F.binary_cross_entropy_with_logits(logits[:, 1], targets[:, 1], pos_weight=w, reduction="none").mean(1)
    down = (per * downbeat_mask).sum() / downbeat_mask.sum().clamp_min(1.0)
    if targets.shape[1] > 2 and offbeat_weight:
        m = targets[:, 2]
        beat = beat + offbeat_weight * (F.softplus(logits[:, 0]) * m).sum() / m.sum().clamp_min(1.0)
    if targets.shape[1] > 3 and nondownbeat_weight:
        m = targets[:, 3] * downbeat_mask[:, None]
        down = down + nondownbeat_weight * (F.softplus(logits[:, 1]) * m).sum() / m.sum().clamp_min(1.0)
    return beat, down


# ---------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model: BeatNetTorch, **extra) -> None:
    state = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "arch": model.arch.to_dict(),
             "frontend": FrontEndConfig().to_dict(),
             "norm": {"mean": model.norm_mean.tolist(), "std": model.norm_std.tolist()},
             "model": model.state_dict(), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> tuple[BeatNetTorch, dict]:
    """Rebuild the network from a checkpoint alone: ``(model in eval mode, checkpoint dict)``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CliError(f"{path}: not a readable checkpoint ({e})", "give OUT/last.pt or OUT/final.pt of a beatnet run")
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise CliError(f"{path}: not a beat-network checkpoint ({CKPT_FORMAT})",
                       "this is a file of `python -m training beatnet fit`'s OUT folder")
    model = BeatNetTorch(BeatNetArch.from_dict(state["arch"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def export_weights(checkpoint: str | Path, out: str | Path) -> Path:
    """The engine's weights file (``engine.beatnet``) from a checkpoint; returns its path."""
    model, state = load_checkpoint(checkpoint)
    arrays = model.numpy_arrays()
    tc = state.get("train_config") or {}
    meta = {"arch": model.arch.to_dict(), "frontend": state.get("frontend", FrontEndConfig().to_dict()),
            "train": {"step": state.get("step"), "elapsed_s": round(float(state.get("elapsed_s", 0.0)), 1),
                      "data": tc.get("data"), "split": tc.get("split"), "checkpoint": Path(checkpoint).name},
            "params": int(sum(v.size for k, v in arrays.items() if not k.startswith("norm_")))}
    BeatNet.save(out, arrays, meta)
    return Path(out)


# ---------------------------------------------------------------------------------------------- training
def data_roots(data: str) -> list[str]:
    """The dataset roots of ``data``: one folder, or several separated by commas."""
    roots = [r.strip() for r in str(data).split(",") if r.strip()]
    if not roots:
        raise CliError(f"data={data!r}: no folder named", "data=FOLDER or data=FOLDER1,FOLDER2")
    return roots


def fit(cfg: BeatNetConfig, log=print) -> Path:
    from tqdm import tqdm

    from .data.sampler import PooledBeatSampler, StemSampler

    torch.set_num_threads(max(1, cfg.threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fe = FrontEndConfig()
    roots = data_roots(cfg.data)
    # several roots (data=A,B): one pool of their tracks with beats (PooledBeatSampler)
    sampler = PooledBeatSampler([StemSampler(r, split=cfg.split, seconds=cfg.seconds, seed=cfg.seed,
                                             max_tracks=cfg.max_tracks or None, write_cache=cfg.write_cache)
                                 for r in roots])
    examples = BeatExamples(sampler, cfg, fe)
    val = None
    vals = []
    for r in roots:  # the validation splits of the roots that have one (40 tracks of each at most)
        try:
            vals.append(StemSampler(r, split="validation", seconds=cfg.seconds, seed=cfg.seed, max_tracks=40,
                                    write_cache=cfg.write_cache))
        except Exception:  # no validation split in this root
            pass
    if vals:
        val = BeatExamples(PooledBeatSampler(vals), cfg, fe)
    torch.manual_seed(cfg.seed)
    model = BeatNetTorch(cfg.arch(), cfg.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, elapsed0 = 0, 0.0
    last = out / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        if state.get("arch") != model.arch.to_dict():
            raise CliError(f"{last}: another architecture ({state.get('arch')})", "use another out=")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, elapsed0 = int(state["step"]), float(state.get("elapsed_s", 0.0))
        log(f"[beatnet] resuming {last} at step {start}")
    elif cfg.init:
        src, _ = load_checkpoint(cfg.init)
        own = model.state_dict()
        odd = [k for k, v in src.state_dict().items() if not k.startswith("head.") and (k not in own or own[k].shape != v.shape)]
        if odd:
            raise CliError(f"init={cfg.init}: another body ({src.arch.to_dict()}; {odd[0]} differs)",
                           "init= adds outputs to a trained network of the same channels, kernel and dilations")
        for k, v in src.state_dict().items():
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v)
            elif k.startswith("head.") and k in own and own[k].shape[1:] == v.shape[1:]:
                n = min(len(own[k]), len(v), len(OUTPUTS))
                own[k][:n].copy_(v[:n])  # beat and downbeat rows
                own[k][len(OUTPUTS):] = 0.0  # new tempo rows: a uniform distribution to start
        log(f"[beatnet] starting from {cfg.init}")
    else:
        norm = estimate_norm(sampler, cfg.norm_samples, cfg.seed)
        model.norm_mean.copy_(torch.tensor(norm["mean"]))
        model.norm_std.copy_(torch.tensor(norm["std"]))
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[beatnet] {n_params} parameters, receptive field {model.arch.receptive_field()} frames "
        f"({model.arch.receptive_field() / examples.fps:.2f} s); {len(sampler)} tracks")
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    except Exception:  # tensorboard not installed: the JSON log stays
        writer = None
    lm = TorchLogMel(fe)
    t0 = time.time()

    def save(name: str, step: int) -> None:
        save_checkpoint(out / name, model, optimizer=opt.state_dict(), step=step,
                        elapsed_s=elapsed0 + time.time() - t0, train_config=asdict(cfg))

    def val_loss() -> dict:
        model.eval()
        tot = np.zeros(4)
        with torch.no_grad():
            for j in range(cfg.val_batches):
                b = val.batch(np.random.default_rng([cfg.seed, 10 ** 9 + j]), cfg.batch_size)
                logits = model(lm(b["audio"]))
                # the plain BCE, comparable across runs whatever their hard-negative weights
                lb, ld = beat_losses(logits, b["targets"], b["downbeat_mask"], cfg.pos_weight)
                tot[:2] += [float(lb), float(ld)]
                if model.arch.tempo_bins:
                    lt, acc = tempo_loss(logits[:, len(OUTPUTS):], b["targets"][:, 4], model.arch, cfg.tempo_sigma)
                    tot[2:] += [float(lt), float(acc)]
        model.train()
        out = {"val_beat": tot[0] / cfg.val_batches, "val_downbeat": tot[1] / cfg.val_batches}
        if model.arch.tempo_bins:
            out.update(val_tempo=tot[2] / cfg.val_batches, val_tempo_acc=tot[3] / cfg.val_batches)
        return out

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="beatnet")
    recent: list[float] = []
    model.train()
    step = start
    for step in bar:
        if (cfg.stop_after and step - start >= cfg.stop_after) or (
                cfg.stop_minutes and time.time() - t0 >= 60.0 * cfg.stop_minutes):
            save("last.pt", step)
            log(f"[beatnet] stopped at step {step}; run the same command again to resume")
            break
        rng = np.random.default_rng([cfg.seed, step])
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout: a pure function of the step too
        b = examples.batch(rng, cfg.batch_size)
        lr = lr_at(step, base=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup, total=cfg.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.no_grad():
            feats = lm(b["audio"])
        logits = model(feats)
        lb, ld = beat_losses(logits, b["targets"], b["downbeat_mask"], cfg.pos_weight,
                             cfg.offbeat_weight, cfg.nondownbeat_weight)
        loss = lb + cfg.downbeat_weight * ld
        lt = None
        if model.arch.tempo_bins:
            lt, _ = tempo_loss(logits[:, len(OUTPUTS):], b["targets"][:, 4], model.arch, cfg.tempo_sigma)
            loss = loss + cfg.tempo_weight * lt
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        rec = {"step": step, "loss": loss.item(), "beat": lb.item(), "downbeat": ld.item(), "lr": lr}
        if lt is not None:
            rec["tempo"] = lt.item()
        if val is not None and cfg.val_every and (step + 1) % cfg.val_every == 0:
            rec.update(val_loss())
        recent.append(rec["loss"])
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if writer is not None and (step % cfg.log_every == 0 or "val_beat" in rec):
            for k, v in rec.items():
                if k != "step":
                    writer.add_scalar(f"beatnet/{k}", v, step)
        bar.set_postfix(loss=f"{np.mean(recent[-20:]):.4f}", lr=f"{lr:.1e}")
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            save("last.pt", step + 1)
    else:
        save("final.pt", cfg.steps)
        log(f"[beatnet] {cfg.steps - start} steps in {time.time() - t0:.0f} s; wrote {out / 'final.pt'}")
    if writer is not None:
        writer.close()
    return out / "final.pt"


# ---------------------------------------------------------------------------------------------- command line
PROG = "python -m training beatnet"


def _keys() -> str:
    rows = [f"  {f.name:<16} {getattr(f.type, '__name__', f.type)!s:<6} {f.default!s}" for f in fields(BeatNetConfig)]
    return "keys (key=value, or a TOML file with --config; the command line wins):\n" + "\n".join(rows)


@guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "fit":
        ap = Parser(prog=f"{PROG} fit", description="Train (or resume from OUT/last.pt) the causal beat and "
                    "downbeat network.", epilog=_keys())
        ap.add_argument("--config", help="TOML file of keys (default: none)")
        ap.add_argument("overrides", nargs="*", metavar="key=value")
        a = ap.parse_args(rest)
        cfg = load_config(a.config, a.overrides)
        for r in data_roots(cfg.data):
            if not Path(r).is_dir():
                raise CliError(f"data={r}: no such folder", "render a dataset first (python -m training.data)")
        fit(cfg)
        return 0
    if cmd == "export":
        ap = Parser(prog=f"{PROG} export", description="Write the engine's weights file (.npz) of a checkpoint.")
        ap.add_argument("checkpoint")
        ap.add_argument("out", help="e.g. engine/assets/model/beatnet.npz")
        a = ap.parse_args(rest)
        p = export_weights(a.checkpoint, a.out)
        print(f"wrote {p} ({p.stat().st_size / 1e3:.0f} kB)")
        return 0
    raise CliError(f"unknown beatnet command {cmd!r}", "choose fit or export")


if __name__ == "__main__":
    sys.exit(main())

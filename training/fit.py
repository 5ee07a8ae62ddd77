"""``python -m training fit``: the training phases of Stem-JEPA and its zero-shot extension.

Phases (``phase=`` in the config file or on the command line):

* ``contrastive`` -- phase 1: InfoNCE between patch-mean embeddings of context mix and target stem.
* ``jepa``        -- phase 2: context encoder + predictor conditioned on the target's name (FiLM on a
  text vector; ``conditioning=class`` gives the 4-class Stem-JEPA baseline), EMA target encoder,
  per-patch normalised MSE. Starts from ``init=`` (phase 1) or from scratch.
* ``beats``       -- beat head on the frozen context encoder, BCE with label widening.

Exact resume: the data of step ``s`` is drawn from ``np.random.default_rng([seed, s, rank])``;
lr and EMA momentum are pure functions of the step; weights, optimiser and step are checkpointed.
Multi-process: launch with ``torchrun --nproc_per_node N -m training fit ...`` (gloo on CPU, nccl
on CUDA); each rank draws its own batch, DDP averages the gradients.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from engine.frontend import FrontEndConfig

from .checkpoint import load_model, save_checkpoint
from .config import get_config
from .features import TorchLogMel
from .losses import beat_loss, info_nce, jepa_loss, widen_beat_targets
from .model import StemJEPA, retrieval_normalise
from .schedules import ema_tau_at, lr_at

PHASES = ("contrastive", "jepa", "beats")
GROUP_BY = ("category", "song", "mixed")
BEAT_FRAME_OFFSET_S = FrontEndConfig().frames_centre_s(2)  # centre of activation frame 0 (engine.frontend)


@dataclass
class TrainConfig:
    phase: str = "jepa"
    model: str = "tiny"  # a name in training.config.CONFIGS
    conditioning: str = "film"  # film (text, zero-shot) | class (4-class baseline)
    causal: bool = False  # streaming (block-causal) encoder; an init of the other kind is converted
    data: str = "/work/data/render"
    split: str = "train"
    out: str = "runs/default"
    init: str = ""  # checkpoint to start from (phase 1 -> phase 2, phase 2 -> beats)
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    min_lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    ema_start: float = 0.996
    ema_end: float = 0.9999
    label_mode: str = "mixed"  # fine | category | mixed
    frames: int = 800  # training crop in log-mel frames (multiple of 16); shorter crops are placed
    # at a random column of the position embedding each step
    contrastive_weight: float = 0.0  # optional InfoNCE term added in the jepa phase
    max_temp: float = 1.0  # cap of the InfoNCE temperature (phase 1 uses 0.1: see losses.info_nce)
    center: bool = False  # InfoNCE on batch-centred embeddings (no hubs, no collapse: losses.info_nce)
    group_negatives: bool = False  # phase 1: a row's negatives are its own group's rows only (group_size)
    batch_negatives_weight: float = 0.0  # phase 1 with group_negatives: weight of a second InfoNCE term
    # whose negatives are the whole batch (every category), so that the encoder also learns which
    # kind of stem a context lacks; 0 = the group term alone
    beat_widen: int = 1
    beat_pos_weight: float = 5.0
    ckpt_every: int = 200
    log_every: int = 10
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    amp: bool = False  # bf16 autocast (CUDA; on CPU it uses AMX where present)
    max_tracks: int = 0
    norm_samples: int = 64
    text_encoder: str = "minilm"
    group_size: int = 0  # >0: batches made of groups of this many samples (hard negatives for InfoNCE)
    group_by: str = "category"  # what a group shares: "category" (same instrument family, other songs),
    # "song" (other stems of one song: the distractors nearest a query in retrieval), or "mixed" (alternating)
    queue_size: int = 0  # >0: FIFO of this many pooled target embeddings of earlier steps, extra negatives
    # for the auxiliary InfoNCE (the target side is the EMA encoder, so queued entries stay comparable)
    stop_after: int = 0  # stop after this many steps in this invocation (resume later); 0 = run to the end
    stop_minutes: float = 0.0  # stop (checkpointing) once this invocation has trained this long; 0 = no limit

    @classmethod
    def load(cls, path: str | None, overrides: list[str]) -> "TrainConfig":
        values: dict = {}
        if path:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        values.update(cls.parse_overrides(overrides))
        return cls.from_values(values, path)

    @classmethod
    def parse_overrides(cls, overrides: list[str]) -> dict:
        """``["steps=100", "amp=true"]`` -> ``{"steps": 100, "amp": True}``, typed as the defaults."""
        types = {f.name: f.type for f in fields(cls)}
        values = {}
        for ov in overrides:
            if "=" not in ov:
                raise SystemExit(f"override {ov!r} must look like key=value")
            k, v = ov.split("=", 1)
            k = k.lstrip("-").replace("-", "_")
            if k not in types:
                raise SystemExit(f"unknown training option {k!r}; known: {', '.join(sorted(types))}")
            values[k] = _parse(v, getattr(cls, k) if hasattr(cls, k) else None)
        return values

    @classmethod
    def from_values(cls, values: dict, source: str | None = None) -> "TrainConfig":
        """A checked config from a dict of keys (a TOML table, a stage of a recipe): unknown keys,
        values of the wrong type and unknown phases or groupings are refused (``SystemExit``)."""
        defaults = {f.name: f.default for f in fields(cls)}
        unknown = set(values) - set(defaults)
        if unknown:
            raise SystemExit(f"unknown training options in {source}: {sorted(unknown)}")
        for k, v in values.items():
            d = defaults[k]
            if isinstance(d, bool) or isinstance(v, bool):
                ok = isinstance(d, bool) and isinstance(v, bool)
            else:  # a whole number is a fine float
                ok = isinstance(v, type(d)) or (isinstance(d, float) and isinstance(v, int))
            if not ok:
                kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(type(d), "a string")
                raise SystemExit(f"{source}: {k} = {v!r} should be {kind}, like its default {d!r}")
        cfg = cls(**values)
        if cfg.phase not in PHASES:
            raise SystemExit(f"phase must be one of {PHASES}, not {cfg.phase!r}")
        if cfg.group_by not in GROUP_BY:
            raise SystemExit(f"group_by must be one of {GROUP_BY}, not {cfg.group_by!r}")
        if cfg.queue_size < 0:
            raise SystemExit("queue_size must be >= 0")
        return cfg


def _parse(v: str, default):
    if isinstance(default, bool):
        return v.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(v)
    if isinstance(default, float):
        return float(v)
    return v


# ----------------------------------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device: str) -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist_info()


class PhaseStep(nn.Module):
    """One training step's forward for a phase; returns ``(loss, metrics)``. Wrapped by DDP."""

    def __init__(self, model: StemJEPA, phase: str, mean: float, std: float, contrastive_weight: float,
                 beat_pos_weight: float, max_temp: float = 1.0, center: bool = False, group: int = 0,
                 batch_negatives_weight: float = 0.0):
        super().__init__()
        self.max_temp, self.center, self.group = max_temp, center, group
        self.bnw = batch_negatives_weight
        self.model, self.phase = model, phase
        self.logmel = TorchLogMel(FrontEndConfig())
        self.mean, self.std = mean, std
        self.cw, self.bpw = contrastive_weight, beat_pos_weight
        self.frames = model.cfg.max_frames
        self.n_samples = self.logmel.cfg.n_samples(self.frames)
        self.col_offset = 0
        self.queue = NegativeQueue(0, model.cfg.d_model)

    def set_frames(self, frames: int) -> None:
        if frames % self.model.cfg.patch or not 0 < frames <= self.model.cfg.max_frames:
            raise SystemExit(f"frames={frames} must be a multiple of {self.model.cfg.patch} up to {self.model.cfg.max_frames}")
        self.frames = frames
        self.n_samples = self.logmel.cfg.n_samples(frames)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` audio -> ``(B, 80, frames)`` normalised log-mel (zero-padded audio if short)."""
        if x.shape[-1] < self.n_samples:
            x = torch.nn.functional.pad(x, (0, self.n_samples - x.shape[-1]))
        m = (self.logmel(x[..., : self.n_samples]) - self.mean) / self.std
        return m[..., : self.frames]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        m = self.model
        if self.phase == "beats":
            with torch.no_grad():
                z = m.encoder(self.features(batch["mix"]), self.col_offset)
            logits = m.beat_head(z)
            loss = beat_loss(logits, batch["beats"], self.bpw)
            return loss, {"bce": loss.detach()}
        zc = m.encoder(self.features(batch["mix"]), self.col_offset)
        if self.phase == "contrastive":
            zt = m.encoder(self.features(batch["target"]), self.col_offset)
            # pooled exactly as retrieval pools them (mean, layer norm, L2)
            p, t = retrieval_normalise(zc.float().mean(1)), retrieval_normalise(zt.float().mean(1))
            groups = (torch.arange(len(p), device=p.device) // self.group) if self.group > 1 else None
            loss = info_nce(p, t, m.log_temp, keys=batch.get("key"), max_temp=self.max_temp, center=self.center,
                            groups=groups)
            metrics = {"infonce": loss.detach()}
            if groups is not None and self.bnw > 0:  # every category's rows as negatives too
                whole = info_nce(p, t, m.log_temp, keys=batch.get("key"), max_temp=self.max_temp,
                                 center=self.center)
                loss = loss + self.bnw * whole
                metrics["infonce_batch"] = whole.detach()
            with torch.no_grad():  # hubness: spread of the column means of the cosine matrix
                hub = (p @ t.t()).mean(0).std()
            metrics.update({"temp": m.log_temp.exp().clamp(0.01, self.max_temp).detach(), "hub": hub,
                            "spread": t.std(0).mean().detach()})
            return loss, metrics
        with torch.no_grad():
            zt = m.target_encoder(self.features(batch["target"]), self.col_offset)
        pred = m.predict(zc, batch["cond"])
        loss = jepa_loss(pred, zt)
        metrics = {"jepa": loss.detach()}
        if self.cw > 0:
            # pooled exactly as retrieval pools (mean, layer norm, L2), negatives: batch + queue
            p, t = retrieval_normalise(pred.float().mean(1)), retrieval_normalise(zt.float().mean(1))
            keys = batch.get("key")
            qv, qk = self.queue.negatives()
            c = info_nce(p, t, m.log_temp, keys=keys, queue=qv, queue_keys=qk, max_temp=self.max_temp,
                         center=self.center)
            loss = loss + self.cw * c
            metrics["infonce"] = c.detach()
            if self.training and keys is not None:
                self.queue.push(t.detach(), keys)
        # collapse monitor: spread of target embeddings across the batch
        metrics["target_std"] = torch.nn.functional.normalize(zt.mean(1), dim=-1).std(0).mean().detach()
        return loss, metrics


class NegativeQueue:
    """FIFO of pooled, normalised target embeddings ``(size, d)`` with the int64 key of their stem
    (:func:`stem_key`), so a query never counts its own stem (another crop of it) as a negative.
    Part of the checkpoint (``state``/``load``): a resumed run sees the same negatives."""

    def __init__(self, size: int, dim: int):
        self.size, self.dim = int(size), int(dim)
        self.vectors = torch.zeros(0, dim)
        self.keys = torch.zeros(0, dtype=torch.long)

    def negatives(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.size <= 0 or len(self.keys) == 0:
            return None, None
        return self.vectors, self.keys

    def push(self, vectors: torch.Tensor, keys: torch.Tensor) -> None:
        if self.size <= 0:
            return
        dev = vectors.device  # stay on the training device: the next step multiplies by these
        v = torch.cat([vectors.detach().float(), self.vectors.to(dev)])[: self.size]
        k = torch.cat([keys.detach().long().to(dev), self.keys.to(dev)])[: self.size]
        self.vectors, self.keys = v, k

    def to(self, device) -> "NegativeQueue":
        self.vectors, self.keys = self.vectors.to(device), self.keys.to(device)
        return self

    def state(self) -> dict:
        return {"size": self.size, "vectors": self.vectors.cpu().clone(), "keys": self.keys.cpu().clone()}

    def load(self, st: dict | None) -> None:
        if not st or int(st.get("size", 0)) != self.size or st["vectors"].shape[-1] != self.dim:
            return  # another queue size or width: start empty
        self.vectors, self.keys = st["vectors"].float(), st["keys"].long()


def stem_key(track_id: str, stem_id: str) -> int:
    """Stable signed 63-bit key of a (track, stem) pair."""
    h = hashlib.blake2b(f"{track_id}\x00{stem_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFFFFFFFFFF


def make_batch(sampler, rng: np.random.Generator, cfg: TrainConfig, text_table: dict | None,
               beat_fps: float, n_act: int) -> dict:
    if cfg.phase == "beats":
        items = [sampler.sample_beats(rng) for _ in range(cfg.batch_size)]
        mix = torch.from_numpy(np.stack([it["mix"] for it in items]))
        beats = torch.stack([widen_beat_targets(np.asarray(it["beats"]) - BEAT_FRAME_OFFSET_S, n_act, beat_fps,
                                                cfg.beat_widen) for it in items])
        return {"mix": mix, "beats": beats}
    items = grouped_samples(sampler, rng, cfg.batch_size, cfg.group_size, cfg.group_by)
    batch = {"mix": torch.from_numpy(np.stack([it["mix"] for it in items])),
             "target": torch.from_numpy(np.stack([it["target"] for it in items])),
             "key": torch.tensor([stem_key(it["track_id"], it["stem_id"]) for it in items], dtype=torch.long)}
    if cfg.phase == "jepa":
        if cfg.conditioning == "class":
            batch["cond"] = torch.tensor([it["class_idx"] for it in items], dtype=torch.long)
        else:
            batch["cond"] = torch.from_numpy(np.stack([text_table[it["label"]] for it in items]))
    return batch


def grouped_samples(sampler, rng: np.random.Generator, n: int, group: int, by: str = "category",
                    max_tries: int = 400) -> list[dict]:
    """``n`` samples; with ``group > 1`` in runs of ``group`` that share something with the run's
    first sample:

    * ``by="category"``: the target's category (drawn by rejection, any category after ``max_tries``);
    * ``by="song"``: the song, each with another target stem (as many as the song has active at a
      drawn offset; the run is completed with other songs' samples);
    * ``by="mixed"``: runs alternate between the two.
    """
    if group <= 1:
        return [sampler.sample(rng) for _ in range(n)]
    items: list[dict] = []
    run = 0
    while len(items) < n:
        first = sampler.sample(rng)
        items.append(first)
        mode = by if by != "mixed" else ("song" if run % 2 == 0 else "category")
        run += 1
        used = {first["stem_id"]}
        for _ in range(min(group, n - len(items) + 1) - 1):
            it = None
            if mode == "song":
                it = sampler.sample_track(rng, first["track_index"], exclude=used)
                if it is not None:
                    used.add(it["stem_id"])
            elif hasattr(sampler, "sample_category"):  # indexed: no rejection loop over whole examples
                it = sampler.sample_category(rng, first["category"])
            else:
                for _ in range(max_tries):
                    it = sampler.sample(rng)
                    if it["category"] == first["category"]:
                        break
            items.append(it if it is not None else sampler.sample(rng))
    return items[:n]


def estimate_norm(sampler, n: int, seed: int) -> dict:
    """Mean/std of the log-mel of ``n`` random mixes (the model's input statistics)."""
    rng = np.random.default_rng([seed, 987654321])
    lm = TorchLogMel()
    vals = []
    for _ in range(n):
        x = torch.from_numpy(sampler.sample(rng)["mix"])[None]
        vals.append(lm(x).flatten())
    v = torch.cat(vals)
    return {"mean": float(v.mean()), "std": float(v.std())}


def text_vectors(labels: list[str], which: str) -> tuple[dict, dict]:
    from engine.text import CachedText, MiniLMText

    if which != "minilm":
        raise SystemExit(f"text_encoder {which!r}: training supports 'minilm' (CLAP vectors can be added via engine.text)")
    enc = CachedText(MiniLMText())
    vecs = enc.encode(labels)
    return {l: v for l, v in zip(labels, vecs)}, {"encoder": enc.name, "dim": enc.dim}


def trainable_for(model: StemJEPA, phase: str, contrastive_weight: float = 0.0) -> list[nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    mods = {"contrastive": [model.encoder], "jepa": [model.encoder, model.predictor],
            "beats": [model.beat_head]}[phase]
    params = [p for mod in mods for p in mod.parameters()]
    if phase == "contrastive" or (phase == "jepa" and contrastive_weight > 0):
        params.append(model.log_temp)
    for p in params:
        p.requires_grad_(True)
    return params


def build_model(cfg: TrainConfig, ckpt_dir: Path) -> tuple[StemJEPA, dict, dict | None]:
    """Model for this run: resume from ``out/last.pt`` if present, else from ``init`` or scratch.
    Returns (model, meta from the checkpoint used or {}, full resume state or None)."""
    last = ckpt_dir / "last.pt"
    if last.is_file():
        model, state = load_model(last)
        return model, state, state
    mcfg = get_config(cfg.model, conditioning=cfg.conditioning, causal=cfg.causal)
    model = StemJEPA(mcfg)
    if not cfg.init:
        return model, {}, None
    init_model, state = load_model(cfg.init)
    if cfg.phase == "beats":  # a head on the frozen encoder: the encoder stays what it was trained as
        mcfg = mcfg.with_(causal=init_model.cfg.causal)
        model = StemJEPA(mcfg)
    if init_model.cfg.with_(conditioning=mcfg.conditioning, causal=mcfg.causal) != mcfg:
        raise SystemExit(f"init checkpoint {cfg.init} has config {init_model.cfg.name!r} incompatible with {mcfg.name!r}")
    model.encoder.load_state_dict(init_model.encoder.state_dict())
    model.log_temp.data.copy_(init_model.log_temp.data)
    if state.get("phase") == "contrastive":
        model.sync_target()  # phase 1 trained only the online encoder
    else:
        model.target_encoder.load_state_dict(init_model.target_encoder.state_dict())
    if init_model.cfg.conditioning == mcfg.conditioning:
        model.predictor.load_state_dict(init_model.predictor.state_dict())
    model.beat_head.load_state_dict(init_model.beat_head.state_dict())
    return model, state, None


def fit(cfg: TrainConfig) -> Path:
    from tqdm import tqdm

    rank, world = setup_distributed(cfg.device)
    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and every run
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)

    from .data.sampler import StemSampler

    seconds = FrontEndConfig().n_samples(cfg.frames) / FrontEndConfig().sample_rate
    sampler = StemSampler(cfg.data, split=cfg.split, seconds=seconds, label_mode=cfg.label_mode,
                          seed=cfg.seed, max_tracks=cfg.max_tracks or None)
    model, init_state, resume = build_model(cfg, out)

    norm = init_state.get("norm") or estimate_norm(sampler, cfg.norm_samples, cfg.seed)
    labels = sorted(set(sampler.labels) | set(init_state.get("labels", [])))
    text_table, text_meta = None, init_state.get("text", {"encoder": "none", "dim": model.cfg.text_dim})
    if cfg.phase == "jepa" and model.cfg.conditioning == "film":
        text_table, text_meta = text_vectors(labels, cfg.text_encoder)

    params = trainable_for(model, cfg.phase, cfg.contrastive_weight)
    model.to(device)
    step_mod = PhaseStep(model, cfg.phase, norm["mean"], norm["std"], cfg.contrastive_weight, cfg.beat_pos_weight,
                         cfg.max_temp, cfg.center, cfg.group_size if cfg.group_negatives else 0,
                         cfg.batch_negatives_weight)
    step_mod.set_frames(cfg.frames)
    step_mod.queue = NegativeQueue(cfg.queue_size if cfg.phase == "jepa" else 0, model.cfg.d_model)
    if resume is not None:
        step_mod.queue.load(resume.get("queue"))
    step_mod.to(device)
    step_mod.queue.to(device)
    runner: nn.Module = step_mod
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(step_mod, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    start = 0
    if resume is not None:
        if resume.get("phase") != cfg.phase:
            raise SystemExit(f"{out}/last.pt is a {resume.get('phase')!r} run; this is {cfg.phase!r}: use another out=")
        opt.load_state_dict(resume["optimizer"])
        start = int(resume["step"])

    writer = None
    if rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"))
        except Exception:  # tensorboard not installed: keep the JSON log
            writer = None
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    beat_fps = model.cfg.beat_rate
    n_act = cfg.frames // model.cfg.patch * model.cfg.beat_probes
    amp_dtype = torch.bfloat16
    amp = cfg.amp

    elapsed0 = float(resume.get("elapsed_s", 0.0)) if resume is not None else 0.0

    def save(name: str, step: int) -> None:
        if rank != 0:
            return
        elapsed = elapsed0 + time.time() - t0  # training seconds of this run, across resumes
        (out / "elapsed_s").write_text(f"{elapsed:.1f}\n")
        save_checkpoint(out / name, model, norm=norm, text=text_meta, phase=cfg.phase, step=step,
                        elapsed_s=elapsed, optimizer=opt.state_dict(), train_config=asdict(cfg), labels=labels,
                        queue=step_mod.queue.state(),
                        conditioning={k: v.tolist() for k, v in (text_table or {}).items()} or
                        init_state.get("conditioning", {}))

    log_path = out / "log.jsonl"
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=rank != 0, desc=cfg.phase)
    losses = []
    t0 = time.time()
    for step in bar:
        if cfg.stop_after and step - start >= cfg.stop_after:
            save("last.pt", step)
            if rank == 0:
                print(f"[fit] stopped after {cfg.stop_after} steps at step {step}; run again to resume")
            break
        if cfg.stop_minutes and time.time() - t0 >= 60.0 * cfg.stop_minutes:
            save("last.pt", step)
            if rank == 0:
                print(f"[fit] stopped after {cfg.stop_minutes:g} minutes at step {step}; run again to resume")
            break
        rng = np.random.default_rng([cfg.seed, step, rank])
        batch = {k: v.to(device) for k, v in make_batch(sampler, rng, cfg, text_table, beat_fps, n_act).items()}
        lr = lr_at(step, base=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup, total=cfg.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        step_mod.col_offset = int(rng.integers(0, model.cfg.max_columns - cfg.frames // model.cfg.patch + 1))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss, metrics = runner(batch)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if cfg.phase == "jepa":
            model.ema_update(ema_tau_at(step, start=cfg.ema_start, end=cfg.ema_end, total=cfg.steps))
        losses.append(float(loss.detach()))
        if rank == 0:
            rec = {"step": step, "loss": losses[-1], "lr": lr, **{k: float(v) for k, v in metrics.items()}}
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if writer is not None and step % cfg.log_every == 0:
                for k, v in rec.items():
                    if k != "step":
                        writer.add_scalar(f"{cfg.phase}/{k}", v, step)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.2e}")
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            if cfg.phase == "contrastive" and step + 1 == cfg.steps:
                model.sync_target()  # the contrastive model's "target" is its encoder
            save("last.pt", step + 1)
    else:
        _finish_run(rank, writer, save, cfg, start, t0, losses, out)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out / "final.pt"


def _finish_run(rank, writer, save, cfg, start, t0, losses, out) -> None:
    if rank == 0:
        save("final.pt", cfg.steps)
        if writer is not None:
            writer.close()
        print(f"[fit] {cfg.phase}: {cfg.steps - start} steps in {time.time() - t0:.0f} s; "
              f"last loss {np.mean(losses[-20:]) if losses else float('nan'):.4f}; wrote {out / 'final.pt'}")

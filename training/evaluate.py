"""Evaluation: stem retrieval (the papers' protocol) and beat tracking (offline and causal).

Retrieval, per track of the split: every 8-s chunk (up to ``max_chunks``) is embedded; for each
stem ``s`` the query is ``predictor(encoder(mix without s), name of s)`` (the contrastive-only
model: ``encoder(mix without s)``), the candidate is ``target_encoder(s)``; both are pooled over
patches and averaged over chunks, then layer-normed and L2-normalised; candidates are every stem of
every track; distance is Euclidean. Reported: Recall@1/5/10, normalised rank mean and median (%),
overall and per category, beside the figures of a random ranking.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.audio import AudioError, load_audio

from .checkpoint import load_model
from .config import class_index
from .features import TorchLogMel
from .model import retrieval_normalise

KS = (1, 5, 10)
BANDED_MAX_COLUMNS = 1200  # causal beat activations of a whole track at once up to this (3.2 min)


# ---------------------------------------------------------------------------------------------- metrics
def ranks_from_distances(dist: np.ndarray, true_idx: np.ndarray) -> np.ndarray:
    """1-based rank of ``true_idx[i]`` in row ``i`` of ``dist (Q, N)`` (ties count against)."""
    d_true = dist[np.arange(len(true_idx)), true_idx]
    return 1 + (dist < d_true[:, None]).sum(1) + ((dist == d_true[:, None]).sum(1) - 1)


def retrieval_metrics(ranks: np.ndarray, n_candidates) -> dict:
    """Recall@k (%) and normalised rank ``(rank - 1) / n_candidates`` mean and median (%);
    ``n_candidates``: one count for every rank, or one per rank (queries ranked among different sets)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {"n": 0}
    nr = (ranks - 1) / np.asarray(n_candidates, dtype=np.float64) * 100.0
    out = {f"R@{k}": float((ranks <= k).mean() * 100.0) for k in KS}
    out.update({"nrank_mean": float(nr.mean()), "nrank_median": float(np.median(nr)), "n": int(ranks.size)})
    return out


def random_metrics(n_candidates: int) -> dict:
    """Expected figures of a uniformly random ranking of ``n_candidates``."""
    out = {f"R@{k}": 100.0 * min(k, n_candidates) / n_candidates for k in KS}
    out.update({"nrank_mean": 100.0 * (n_candidates - 1) / 2 / n_candidates,
                "nrank_median": 100.0 * (n_candidates - 1) / 2 / n_candidates})
    return out


# ---------------------------------------------------------------------------------------------- data
@dataclass
class EvalTrack:
    track_id: str
    stems: list[tuple[str, str, str, np.ndarray]]  # (stem_id, fine label, category, audio (S,))
    beats: np.ndarray | None
    downbeats: np.ndarray | None = None  # track.json's "downbeats", when the render wrote them
    # read_tracks(warm=...): each kept chunk is a block of `warm` samples before the window (zeros
    # where the track had fewer) then the window; chunk_warm[j]: samples of real audio before chunk j
    chunk_warm: list[int] | None = None


def read_track_list(path: str | Path) -> list[str]:
    """Track ids from a JSON file: a list, or an object with a ``"tracks"`` list."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: not a readable JSON track list ({e})") from e
    ids = d.get("tracks") if isinstance(d, dict) else d
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise SystemExit(f"{path}: expected a non-empty list of track ids (or {{\"tracks\": [...]}})")
    return ids


def read_tracks(root: str | Path, split: str | None, max_tracks: int | None = None,
                max_seconds: float | None = None, only: list[str] | None = None,
                chunks: tuple[int, int] | None = None, warm: tuple[int, int] | None = None) -> list[EvalTrack]:
    """Tracks of ``split``; ``only``: exactly these track ids of the split (in this order), every
    one must exist there. ``chunks = (max_chunks, window)``: keep only the windows retrieval will
    embed (:func:`chunk_starts`), back to back -- the same windows come out again, and whole songs
    no longer sit in memory (a suite over 400 whole songs held 15 GB). ``warm = (samples, step)``
    with ``chunks``: each window keeps up to ``samples`` of the audio before it (whole ``step``s),
    for the live-path token modes of :func:`embed_retrieval` (``EvalTrack.chunk_warm``)."""
    from .data.layout import load_dataset

    tracks = load_dataset(root, split=split)
    if only is not None:
        by_id = {t.track_id: t for t in tracks}
        missing = [i for i in only if i not in by_id]
        if missing:
            raise SystemExit(f"{root}: {len(missing)} listed tracks are not in split {split!r}, e.g. {missing[:3]}")
        tracks = [by_id[i] for i in only]
    out = []
    for t in tracks[: max_tracks or None]:
        stems = []
        for sid, st in t.stems.items():
            try:
                x = load_audio(st.path, duration=max_seconds)
            except AudioError as e:
                print(f"[eval] skipping {e}")
                continue
            stems.append((sid, st.label, st.category, x))
        if not stems:
            continue
        n = max(len(s[3]) for s in stems)
        stems = [(a, b, c, np.pad(x, (0, n - len(x)))) for a, b, c, x in stems]
        chunk_warm = None
        if chunks is not None and warm is not None:
            win, (w, step) = chunks[1], warm
            starts = chunk_starts(n, win, chunks[0])
            chunk_warm = [min(s0, w) // step * step for s0 in starts]
            # x padded by w zeros in front: block j = the w samples before chunk j (zeros before the
            # track's start) then the chunk
            stems = [(a, b, c, np.concatenate([xp[s0:s0 + w + win] for s0 in starts]))
                     for a, b, c, x in stems for xp in [np.pad(x, (w, max(0, starts[-1] + win - n)))]]
        elif chunks is not None and n > chunks[1]:
            starts = chunk_starts(n, chunks[1], chunks[0])
            stems = [(a, b, c, np.concatenate([x[s0:s0 + chunks[1]] for s0 in starts])) for a, b, c, x in stems]
        beats = np.asarray(t.beats, dtype=np.float64) if getattr(t, "beats", None) else None
        db = t.meta.get("downbeats") if isinstance(getattr(t, "meta", None), dict) else None
        downbeats = np.asarray(db, dtype=np.float64) if isinstance(db, list) and db else None
        out.append(EvalTrack(t.track_id, stems, beats, downbeats, chunk_warm))
    if not out:
        raise SystemExit(f"{root}: no usable tracks in split {split!r}")
    return out


def chunk_starts(n_samples: int, win: int, max_chunks: int) -> list[int]:
    """Non-overlapping window starts covering the signal; one (padded) window for short tracks."""
    if n_samples <= win:
        return [0]
    starts = list(range(0, n_samples - win + 1, win))
    if len(starts) > max_chunks:  # spread evenly over the track
        idx = np.linspace(0, len(starts) - 1, max_chunks).round().astype(int)
        starts = [starts[i] for i in idx]
    return starts


# ---------------------------------------------------------------------------------------------- retrieval
class Embedder:
    def __init__(self, ckpt: str | Path, threads: int = 2, batch: int = 16):
        torch.set_num_threads(threads)
        self.model, self.state = load_model(ckpt)
        self.phase = self.state.get("phase", "jepa")
        self.norm = self.state["norm"]
        self.lm = TorchLogMel()
        self.batch = batch
        self.frames = self.model.cfg.max_frames
        self.win = self.lm.cfg.n_samples(self.frames)
        self._text = None

    def features(self, x: np.ndarray, frames: int | None = None) -> torch.Tensor:
        """``(B, S)`` audio -> ``(B, 80, frames)`` normalised log-mel (default: the model's window)."""
        m = self.lm(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return ((m - self.norm["mean"]) / self.norm["std"])[..., : frames or self.frames]

    @torch.no_grad()
    def tokens(self, windows: np.ndarray, target: bool) -> torch.Tensor:
        enc = self.model.target_encoder if target else self.model.encoder
        outs = [enc(self.features(windows[i:i + self.batch])) for i in range(0, len(windows), self.batch)]
        return torch.cat(outs)

    @torch.no_grad()
    def stream_tokens(self, excerpts: np.ndarray, warm: int, target: bool) -> torch.Tensor:
        """Tokens of a window as a live stream computes them: ``excerpts (B, S)`` hold ``warm``
        samples of earlier audio (a multiple of one 160-ms column) then the window; the causal
        encoder's sliding-window reference runs over all of it (``Encoder.forward_banded``), and
        the window's ``(B, 5 * 50, d)`` tokens are returned, each having seen up to 8 s before it."""
        enc = self.model.target_encoder if target else self.model.encoder
        patch = self.model.cfg.patch
        frames = warm // self.lm.cfg.hop + self.frames
        rows = self.model.cfg.n_mels // patch
        outs = []
        for i in range(0, len(excerpts), self.batch):
            m = self.features(excerpts[i:i + self.batch], frames)
            outs.append(enc.forward_banded(m)[:, -rows * (self.frames // patch):])
        return torch.cat(outs)

    def conditioning(self, names: list[str], categories: list[str]) -> torch.Tensor:
        if self.model.cfg.conditioning == "class":
            return torch.tensor([class_index(c) for c in categories], dtype=torch.long)
        table = self.state.get("conditioning") or {}
        missing = [n for n in names if n not in table]
        if missing:
            if self._text is None:
                from engine.text import CachedText, MiniLMText

                self._text = CachedText(MiniLMText())
            for n, v in zip(missing, self._text.encode(missing)):
                table[n] = v
        return torch.from_numpy(np.stack([np.asarray(table[n], dtype=np.float32) for n in names]))


def _finish(e: torch.Tensor) -> np.ndarray:
    return retrieval_normalise(e).numpy()


HEURISTIC = "heuristic"  # --model value of the tempo + key baseline (engine/keytempo.py)


def _heuristic_embed(wins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n_stems, chunks, S)`` windows -> (queries, candidates) ``(n_stems, D)`` of the heuristic:
    the mix without stem i against stem i, averaged over chunks."""
    from engine.keytempo import describe

    n, c, _ = wins.shape
    mix_wo = wins.sum(0, keepdims=True) - wins
    q = np.stack([np.mean([describe(mix_wo[i, j]) for j in range(c)], axis=0) for i in range(n)])
    t = np.stack([np.mean([describe(wins[i, j]) for j in range(c)], axis=0) for i in range(n)])
    return q, t


@dataclass
class RetrievalEmbeddings:
    """What a retrieval is ranked from: one query and one candidate per stem, unit vectors.

    ``Q``, ``C``: ``(n_stems, D)``, the model's (layer-normed, L2) or the heuristic's (L2);
    ``meta``: ``(track_id, stem_id, label, category)`` per row; query i's own stem is candidate i.
    """
    Q: np.ndarray
    C: np.ndarray
    meta: list[tuple[str, str, str, str]]
    system: str
    phase: str
    model_conditioning: str

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, Q=self.Q, C=self.C, meta=np.array(self.meta, dtype=object),
                            info=np.array([self.system, self.phase, self.model_conditioning]))

    @classmethod
    def load(cls, path: str | Path) -> "RetrievalEmbeddings":
        z = np.load(path, allow_pickle=True)
        return cls(z["Q"], z["C"], [tuple(m) for m in z["meta"]], *[str(x) for x in z["info"]])


TOKEN_MODES = ("window", "live", "stream")  # how query / candidate tokens are computed (embed_retrieval)


def embed_retrieval(ckpt, tracks: list[EvalTrack], conditioning="label", max_chunks=4,
                    threads=2, tokens: str = "window") -> RetrievalEmbeddings:
    """Queries and candidates of every stem of ``tracks``, for a checkpoint or the heuristic.

    ``tokens`` (causal models): ``"window"`` encodes each 8-s chunk on its own, queries and
    candidates alike (how training sees a crop); ``"live"`` computes the queries' tokens as the
    live streaming path does (8 s of the track before the chunk warm the encoder's window) and the
    candidates per chunk, as ``engine.library build`` indexes them; ``"stream"`` streams both."""
    if tokens not in TOKEN_MODES:
        raise ValueError(f"tokens={tokens!r}: one of {TOKEN_MODES}")
    from tqdm import tqdm

    heuristic = str(ckpt) == HEURISTIC
    torch.set_num_threads(threads)
    emb = None if heuristic else Embedder(ckpt, threads=threads)
    win = TorchLogMel().cfg.n_samples(800) if heuristic else emb.win
    queries, cands, q_meta = [], [], []
    for t in tqdm(tracks, desc="embed", leave=False):
        if len(t.stems) < 2:
            continue
        audio = np.stack([s[3] for s in t.stems])  # (n_stems, S)
        if t.chunk_warm is not None:  # blocks of (warm, window) from read_tracks(warm=...)
            block = audio.shape[1] // len(t.chunk_warm)
            starts, warms = [j * block + block - win for j in range(len(t.chunk_warm))], list(t.chunk_warm)
        else:  # the whole track (or back-to-back windows, "window" tokens only)
            starts = chunk_starts(audio.shape[1], win, max_chunks)
            warms = None
        audio = np.pad(audio, ((0, 0), (0, max(0, starts[-1] + win - audio.shape[1]))))
        wins = np.stack([audio[:, s:s + win] for s in starts], axis=1)  # (n_stems, chunks, win)
        n, c, w = wins.shape
        if heuristic:
            q, tgt = _heuristic_embed(wins)
        else:
            mix_wo = wins.sum(0, keepdims=True) - wins  # (n_stems, chunks, win): mix without stem i
            if tokens == "window":
                tgt = emb.tokens(wins.reshape(n * c, w), target=True)
                ctx = emb.tokens(mix_wo.reshape(n * c, w), target=False)  # (n*c, P, d)
            else:
                tgt, ctx = _streamed_tokens(emb, audio, starts, warms, tokens == "stream")
                if tgt is None:
                    tgt = emb.tokens(wins.reshape(n * c, w), target=True)
            tgt = tgt.mean(1).reshape(n, c, -1).mean(1)
            if emb.phase == "contrastive":
                q = ctx.mean(1)
            else:
                names = [s[1] if conditioning == "label" else s[2] for s in t.stems]
                cond = emb.conditioning(names, [s[2] for s in t.stems])
                cond = cond.repeat_interleave(c, dim=0)
                with torch.no_grad():
                    q = emb.model.predict(ctx, cond).mean(1)
            q, tgt = q.reshape(n, c, -1).mean(1).numpy(), tgt.numpy()
        for i, (sid, label, cat, _) in enumerate(t.stems):
            queries.append(q[i])
            cands.append(tgt[i])
            q_meta.append((t.track_id, sid, label, cat))
    if not queries:
        raise SystemExit("no track with at least two stems to evaluate")
    Q, C = torch.from_numpy(np.stack(queries)).float(), torch.from_numpy(np.stack(cands)).float()
    if heuristic:  # already unit vectors per chunk: only re-normalise the chunk means
        Q, C = torch.nn.functional.normalize(Q, dim=-1).numpy(), torch.nn.functional.normalize(C, dim=-1).numpy()
    else:
        Q, C = _finish(Q), _finish(C)
    return RetrievalEmbeddings(Q, C, q_meta, str(ckpt), HEURISTIC if heuristic else emb.phase,
                               HEURISTIC if heuristic else emb.model.cfg.conditioning)


def _streamed_tokens(emb: Embedder, audio: np.ndarray, starts: list[int], warms: list[int] | None, targets: bool):
    """``audio (n_stems, S)`` -> streamed ``(target tokens or None, context tokens)``, each
    ``(n_stems * chunks, P, d)`` in the order of ``wins.reshape``: chunk ``j`` of stem ``i`` at row
    ``i * chunks + j``. Chunk ``j`` is preceded by ``warms[j]`` samples of the track (None: the
    audio is the whole track, and up to 8 s of it in whole 160-ms columns are used)."""
    if not emb.model.cfg.causal:
        raise SystemExit("live / stream token modes need a causal (streaming) model")
    col = emb.lm.cfg.hop * emb.model.cfg.patch  # samples per time column
    reach = emb.model.cfg.max_columns * col  # a token sees at most this far back
    warms = [min(s, reach) // col * col for s in starts] if warms is None else [min(w, reach) for w in warms]
    per = []
    mix_wo = audio.sum(0, keepdims=True) - audio
    for s, warm in zip(starts, warms):
        ex = slice(s - warm, s + emb.win)
        ctx = emb.stream_tokens(mix_wo[:, ex], warm, target=False)
        tgt = emb.stream_tokens(audio[:, ex], warm, target=True) if targets else None
        per.append((tgt, ctx))
    stack = lambda xs: torch.stack(xs, dim=1).flatten(0, 1)  # (n, chunks, P, d) -> (n * chunks, P, d)
    return (stack([p[0] for p in per]) if targets else None), stack([p[1] for p in per])


def fuse_embeddings(model: RetrievalEmbeddings, keytempo: RetrievalEmbeddings, weight: float) -> RetrievalEmbeddings:
    """The model's ranking fused with the tempo + key descriptor's, as the engine ranks a library:
    unit vectors ``[sqrt(1 - w) * model, sqrt(w) * keytempo]``, whose cosine is
    ``(1 - w) * cos_model + w * cos_keytempo`` (``engine.keytempo.fuse``)."""
    from engine.keytempo import fuse

    if [m[:2] for m in model.meta] != [m[:2] for m in keytempo.meta]:
        raise ValueError("the two embeddings cover different stems")
    return RetrievalEmbeddings(fuse(model.Q, keytempo.Q, weight), fuse(model.C, keytempo.C, weight), model.meta,
                               f"{model.system} + keytempo {weight:g}", model.phase, model.model_conditioning)


def centre_embeddings(e: RetrievalEmbeddings) -> RetrievalEmbeddings:
    """Queries and candidates each minus their own mean, re-normalised: the retrieval-side twin of the
    phase-1 loss's ``center=true`` (``losses.info_nce``), whose encoder learns only what tells rows
    apart while a common component grows unchecked (docs/report/generalisation.md)."""
    def c(x: np.ndarray) -> np.ndarray:
        x = x - x.mean(0, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return RetrievalEmbeddings(c(e.Q), c(e.C), e.meta, f"{e.system} (centred)", e.phase, e.model_conditioning)


def _within_category(dist: np.ndarray, cats: np.ndarray) -> dict:
    """Figures when each query competes only with the candidates of its own category (the engine's
    ``restrict_category``): ``overall`` pools every query's normalised rank within its category."""
    out: dict = {"per_category": {}}
    all_ranks, all_n = [], []
    for cat in sorted(set(cats)):
        idx = np.flatnonzero(cats == cat)
        if len(idx) < 2:
            continue
        r = ranks_from_distances(dist[np.ix_(idx, idx)], np.arange(len(idx)))
        out["per_category"][cat] = {**retrieval_metrics(r, len(idx)), "n_candidates": int(len(idx))}
        all_ranks.append(r)
        all_n.append(np.full(len(r), len(idx)))
    if all_ranks:
        out["overall"] = retrieval_metrics(np.concatenate(all_ranks), np.concatenate(all_n))
    return out


def score_retrieval(e: RetrievalEmbeddings, conditioning="label", max_chunks=4, center: bool = False) -> dict:
    """Retrieval figures of :class:`RetrievalEmbeddings`: every stem's rank among all candidates
    (and, under ``within_category``, among its own category's); ``center``: :func:`centre_embeddings` first."""
    if center:
        e = centre_embeddings(e)
    Q, C = e.Q, e.C
    dist = np.sqrt(np.maximum(0.0, (Q**2).sum(1)[:, None] + (C**2).sum(1)[None] - 2 * Q @ C.T))
    ranks = ranks_from_distances(dist, np.arange(len(Q)))  # query i's own stem is candidate i
    n_c = len(C)
    result = {"checkpoint": e.system, "phase": e.phase, "conditioning": conditioning,
              "model_conditioning": e.model_conditioning, "n_tracks": len({m[0] for m in e.meta}),
              "n_candidates": n_c, "overall": retrieval_metrics(ranks, n_c), "random": random_metrics(n_c),
              "per_category": {}}
    cats = np.array([m[3] for m in e.meta])
    for cat in sorted(set(cats)):
        result["per_category"][cat] = retrieval_metrics(ranks[cats == cat], n_c)
    result["within_category"] = _within_category(dist, cats)
    # how many of each query's top 5 are of the category it asked for (what a performer hears first)
    top5 = np.argsort(dist, axis=1, kind="stable")[:, :5]
    result["top5_category_precision"] = float((cats[top5] == cats[:, None]).mean() * 100.0)
    result["centred"] = bool(center)
    result["recall_curve"] = [float((ranks <= k).mean() * 100.0) for k in range(1, 51)]
    result["max_chunks"] = int(max_chunks)
    result["track_ids"] = sorted({m[0] for m in e.meta})
    return result


def _warm(tokens: str) -> tuple[int, int] | None:
    """read_tracks' ``warm`` for a token mode: 8 s (the encoder's reach) in whole 160-ms columns
    (16 frames of 160 samples) before each window."""
    col = 16 * TorchLogMel().cfg.hop
    return None if tokens == "window" else (50 * col, col)


def evaluate_retrieval(ckpt, data, split="validation", conditioning="label", max_chunks=4,
                       max_tracks=None, threads=2, tracks=None, keytempo_weight=None,
                       save: str | Path | None = None, center: bool = False, tokens: str = "window") -> dict:
    """Retrieval figures of a checkpoint, or of the tempo + key heuristic (``ckpt="heuristic"``);
    ``keytempo_weight``: the checkpoint's ranking fused with the heuristic's (:func:`fuse_embeddings`);
    ``save``: write the embeddings (``.npz``; ``<save>.keytempo.npz`` for the heuristic's)."""
    if tracks is None:  # only the windows retrieval embeds stay in memory (see read_tracks)
        tracks = read_tracks(data, split, max_tracks, chunks=(max_chunks, TorchLogMel().cfg.n_samples(800)),
                             warm=_warm(tokens))
    e = embed_retrieval(ckpt, tracks, conditioning, max_chunks, threads, tokens)
    if save:
        e.save(save)
    if keytempo_weight is not None and str(ckpt) != HEURISTIC:
        h = embed_retrieval(HEURISTIC, tracks, conditioning, max_chunks, threads)
        if save:
            h.save(str(save).removesuffix(".npz") + ".keytempo.npz")
        e = fuse_embeddings(centre_embeddings(e) if center else e, h, keytempo_weight)
        r = score_retrieval(e, conditioning, max_chunks)  # the model's half is centred, not the fused vectors
        r["centred"], r["tokens"] = bool(center), tokens
        return r
    r = score_retrieval(e, conditioning, max_chunks, center)
    r["tokens"] = tokens
    return r


def print_retrieval(r: dict) -> None:
    hdr = f"{'':24s} {'n':>5s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'nr.mean':>8s} {'nr.med':>7s}"
    print(f"retrieval: {r['checkpoint']} ({r['phase']}, model={r['model_conditioning']}, "
          f"query={r['conditioning']}), {r['n_tracks']} tracks, {r['n_candidates']} candidates")
    print(hdr)

    def row(name, m):
        print(f"{name:24s} {m.get('n', 0):5d} {m['R@1']:6.1f} {m['R@5']:6.1f} {m['R@10']:6.1f} "
              f"{m['nrank_mean']:8.2f} {m['nrank_median']:7.2f}")

    row("overall", r["overall"])
    row("random ranking", {**r["random"], "n": r["overall"]["n"]})
    for cat, m in r["per_category"].items():
        row(f"  {cat}", m)
    w = r.get("within_category", {})
    if "overall" in w:
        row("within its category", w["overall"])
    if "top5_category_precision" in r:
        print(f"top 5 of the asked category: {r['top5_category_precision']:.1f} %")


def plot_recall(results: dict[str, dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n_c = None
    for name, r in results.items():
        ax.plot(range(1, 51), r["recall_curve"], label=name)
        n_c = r["n_candidates"]
    if n_c:
        ax.plot(range(1, 51), [100.0 * k / n_c for k in range(1, 51)], "k--", label="random")
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- beats
def beat_activations(emb: Embedder, mix: np.ndarray, causal: bool) -> np.ndarray:
    """Beat activation (50 Hz, sigmoid) of a whole track.

    offline: consecutive 8-s windows, every activation frame of each.
    causal: as live. A causal model's live hop streams (engine/stream.py): its tokens are those of
    the sliding-window encoder over the whole stream, ``Encoder.forward_banded`` (run at once for
    tracks up to ``BANDED_MAX_COLUMNS`` columns). Otherwise (a bidirectional model, or a longer
    track) a window ending at each 160-ms hop, keeping only its newest column's 8 activations
    (windows shorter than 8 s at the start of the track), as the full-recompute hop does.
    """
    cfg = emb.model.cfg
    full = emb.lm(torch.from_numpy(mix[None].astype(np.float32)))[0]
    full = (full - emb.norm["mean"]) / emb.norm["std"]  # (80, T)
    T = full.shape[1]
    p = cfg.patch
    acts = []
    with torch.no_grad():
        if causal and cfg.causal and p <= T <= BANDED_MAX_COLUMNS * p:
            z = emb.model.encoder.forward_banded(full[None, :, :T // p * p])
            acts.append(torch.sigmoid(emb.model.beat_head(z))[0])
        elif not causal:
            for s in range(0, T - p + 1, cfg.max_frames):
                n = min(cfg.max_frames, (T - s) // p * p)
                z = emb.model.encoder(full[None, :, s:s + n])
                acts.append(torch.sigmoid(emb.model.beat_head(z))[0])
        else:
            for e in range(p, T + 1, p):
                n = min(cfg.max_frames, e)
                z = emb.model.encoder(full[None, :, e - n:e])
                acts.append(torch.sigmoid(emb.model.beat_head(z))[0, -cfg.beat_probes:])
    return torch.cat(acts).numpy() if acts else np.zeros(0, dtype=np.float32)


def evaluate_beats(ckpt, data, split="validation", max_tracks=None, threads=1, max_seconds=None, tracks=None,
                   source: str | None = None) -> dict:
    """Beat and downbeat tracking of the beat head, the beat network or madmom: training/beat_eval.py."""
    from .beat_eval import evaluate_beats as run

    return run(ckpt, data, split, max_tracks, threads, max_seconds, tracks, source)


def causal_beats(act: np.ndarray, fps: float) -> np.ndarray:
    """Beat times (s, activation-frame clock) the live tracker reports, fed frame by frame."""
    from engine.beats import CausalBeatTracker

    return CausalBeatTracker(fps=fps).run(act)


def print_beats(r: dict) -> None:
    from .beat_eval import print_beats as show

    show(r)


def write_json(obj: dict, path: str | Path | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2))


# ---------------------------------------------------------------------------------------------- the three validations
# Each split by song; rebuilt with `python -m training.data ...` (training/data/README.md):
#   in-domain        render-default --only-tracks docs/report/validation_125.json  (FluidR3, dry, 30-s excerpts)
#   cross-corpus     render-varied xcorpus   (POP909: a corpus training never sees; training's sound sources)
#   cross-soundfont  render-varied xsf       (validation songs of the training corpora, held-out TimGM6mb, room)
VALIDATION_SETS = {
    "in-domain": {"dir": "render-indomain", "track_list": "docs/report/validation_125.json"},
    "cross-corpus": {"dir": "xcorpus", "track_list": None},
    "cross-soundfont": {"dir": "xsf", "track_list": None},
}


def evaluate_suite(ckpt, root, sets=None, conditioning="label", max_chunks=4, threads=1, max_tracks=None,
                   keytempo_weight=None, save_dir: str | Path | None = None, center: bool = False,
                   tokens: str = "window") -> dict:
    """Retrieval of ``ckpt`` (or ``"heuristic"``) on every validation set under ``root``;
    ``keytempo_weight`` and ``save_dir`` (one ``<set>.npz`` per set) as :func:`evaluate_retrieval`'s."""
    out = {"checkpoint": str(ckpt), "sets": {}}
    for name in sets or VALIDATION_SETS:
        spec = VALIDATION_SETS[name]
        data = Path(root) / spec["dir"]
        if not (data / "splits.json").is_file():
            raise SystemExit(f"{data}: validation set {name!r} is not rendered (training/data/README.md)")
        only = read_track_list(spec["track_list"]) if spec["track_list"] else None
        tracks = read_tracks(data, "validation", max_tracks, None, only=only,
                             chunks=(max_chunks, TorchLogMel().cfg.n_samples(800)), warm=_warm(tokens))
        save = None
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            save = Path(save_dir) / f"{name}.npz"
        out["sets"][name] = evaluate_retrieval(ckpt, data, "validation", conditioning, max_chunks, threads=threads,
                                               tracks=tracks, keytempo_weight=keytempo_weight, save=save,
                                               center=center, tokens=tokens)
        del tracks
    return out


def print_suite(r: dict) -> None:
    print(f"validation suite: {r['checkpoint']}")
    print(f"{'set':16s} {'tracks':>6s} {'cands':>6s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'nr.mean':>8s} {'nr.med':>7s}")
    for name, s in r["sets"].items():
        m = s["overall"]
        print(f"{name:16s} {s['n_tracks']:6d} {s['n_candidates']:6d} {m['R@1']:6.1f} {m['R@5']:6.1f} {m['R@10']:6.1f} "
              f"{m['nrank_mean']:8.2f} {m['nrank_median']:7.2f}")
        w = s.get("within_category", {}).get("overall")
        if w:
            print(f"{'  within category':16s} {'':6s} {'':6s} {w['R@1']:6.1f} {w['R@5']:6.1f} {w['R@10']:6.1f} "
                  f"{w['nrank_mean']:8.2f} {w['nrank_median']:7.2f}")

"""The Stem-JEPA model family: ViT encoder, predictors (FiLM text / 4-class), beat head, EMA target.

Shapes: ``B`` batch, ``F`` mel bins (80), ``T`` frames (<= 800), ``P = 5 * T/16`` patches,
``d`` model width, ``C`` text-embedding width.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``(N,)`` positions -> ``(N, dim)`` sin-cos embedding."""
    omega = 1.0 / (10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)))
    out = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding ``(cols, rows, dim)``: half the width for the frequency row,
    half for the time column."""
    r = torch.arange(rows).repeat(cols)  # time-major token order
    c = torch.arange(cols).repeat_interleave(rows)
    emb = torch.cat([sincos_1d(dim // 2, r), sincos_1d(dim // 2, c)], dim=1)
    return emb.reshape(cols, rows, dim).float()


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, d: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        hidden = int(d * mlp_ratio)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)
        self.heads = heads

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:  # (B, N, d)
        """``bias``: optional additive attention bias ``(H, N, N)`` (-inf = masked)."""
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2],
                                           attn_mask=None if bias is None else bias.to(qkv.dtype))  # (B, H, N, d/H)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    def step(self, x: torch.Tensor, k_past: torch.Tensor, v_past: torch.Tensor, bias_past: torch.Tensor,
             bias_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block on ``n`` new tokens ``x (B, n, d)`` attending to cached keys / values of
        ``S`` earlier tokens ``k_past, v_past (B, H, S, d/H)`` and to themselves. ``bias_past
        (H, n, S)``, ``bias_new (H, n, n)``: additive biases (-inf = masked; every new token sees
        itself, so no row is all -inf). Same arithmetic as :meth:`forward` over the concatenated
        tokens (the softmax is split over the two key sets instead of concatenating them).
        Returns ``(x (B, n, d), k (B, H, n, d/H), v (B, H, n, d/H))``: this block's keys / values
        of the new tokens, for the cache."""
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scale = 1.0 / math.sqrt(d // self.heads)
        s_past = torch.matmul(q, k_past.to(q.dtype).transpose(-1, -2)).float() * scale + bias_past  # (B, H, n, S)
        s_new = torch.matmul(q, k.transpose(-1, -2)).float() * scale + bias_new  # (B, H, n, n)
        m = torch.maximum(s_past.amax(dim=-1, keepdim=True), s_new.amax(dim=-1, keepdim=True))
        e_past, e_new = torch.exp(s_past - m), torch.exp(s_new - m)
        denom = e_past.sum(dim=-1, keepdim=True) + e_new.sum(dim=-1, keepdim=True)
        a = (torch.matmul(e_past.to(v.dtype), v_past.to(v.dtype)) + torch.matmul(e_new.to(v.dtype), v)) / denom.to(v.dtype)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)))), k, v


def alibi_slopes(heads: int) -> torch.Tensor:
    """``(H,)`` per-head slopes of the column-distance bias: ``2^(-8 (h+1) / H)``."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])


def causal_bias(cols: int, rows: int, heads: int, window: int) -> torch.Tensor:
    """Block-causal attention bias ``(H, P, P)`` over time-major tokens (``P = cols * rows``):
    token i (column ci) sees token j (column cj) iff ``0 <= ci - cj < window``, with the bias
    ``-slope_h * (ci - cj)``; every other pair is ``-inf``."""
    c = torch.arange(cols).repeat_interleave(rows)
    dist = (c[:, None] - c[None, :]).float()  # (P, P)
    ok = (dist >= 0) & (dist < window)
    bias = -alibi_slopes(heads)[:, None, None] * dist[None]
    return bias.masked_fill(~ok[None], float("-inf"))


def step_biases(past_age: torch.Tensor, n_new: int, rows: int, slopes: torch.Tensor,
                window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention biases of a streaming step (the block-causal pattern of :func:`causal_bias`).

    ``past_age (S,)``: for each cached token, how many columns before the first new column its
    column is (>= 1; ``>= window`` for an empty or expired slot); ``n_new`` new tokens
    (``n_new / rows`` columns); ``slopes (H,)``. New token i is in new column ``ci = i // rows``.
    Returns ``bias_past (H, n, S)``: ``-slope * (past_age + ci)`` where that distance is below
    ``window``, else -inf; ``bias_new (H, n, n)``: ``-slope * (ci - cj)`` for ``0 <= ci - cj <
    window``, else -inf. Written with size ops only, so traced graphs keep ``S`` and ``n`` dynamic."""
    ci = torch.div(torch.arange(n_new, device=past_age.device), rows, rounding_mode="floor").to(past_age.dtype)
    sl = slopes.to(past_age.dtype)[:, None, None]
    inf = torch.full((), float("-inf"), dtype=past_age.dtype, device=past_age.device)
    d_past = past_age[None, :] + ci[:, None]  # (n, S)
    bias_past = torch.where((d_past < window)[None], -sl * d_past[None], inf)
    d_new = ci[:, None] - ci[None, :]  # (n, n)
    ok = (d_new >= 0) & (d_new < window)
    bias_new = torch.where(ok[None], -sl * d_new[None], inf)
    return bias_past, bias_new


class Encoder(nn.Module):
    """ViT over 16x16 log-mel patches, no CLS token.

    ``(B, F, T)`` normalised log-mel -> ``(B, P, d)`` tokens, time-major (``P = T/16 * F/16``).
    ``T`` may be any multiple of 16 up to ``max_frames``: the position embedding is sliced.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.patch
        self.patch_embed = nn.Linear(p * p, cfg.d_model)
        pos = sincos_2d(cfg.d_model, cfg.freq_patches, cfg.max_columns)
        if cfg.causal:  # relative time (attention bias) instead of the absolute time half
            pos[..., cfg.d_model // 2:] = 0.0
        self.register_buffer("pos", pos, persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.d_model, eps=1e-6)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F, T)`` -> ``(B, T/p, F/p, p*p)`` patches."""
        b, f, t = x.shape
        p = self.cfg.patch
        x = x.reshape(b, f // p, p, t // p, p).permute(0, 3, 1, 2, 4)
        return x.reshape(b, t // p, f // p, p * p)

    def forward(self, x: torch.Tensor, col_offset: int = 0) -> torch.Tensor:
        """``col_offset``: first position-embedding column to use (training on crops shorter than
        8 s places them anywhere in the window so that every position is learned)."""
        b, f, t = x.shape
        cfg = self.cfg
        if f != cfg.n_mels or t % cfg.patch or t + col_offset * cfg.patch > cfg.max_frames or t == 0:
            raise ValueError(f"encoder input must be (B, {cfg.n_mels}, T) with T a multiple of {cfg.patch} "
                             f"up to {cfg.max_frames}; got {tuple(x.shape)}")
        cols = t // cfg.patch
        z = self.patch_embed(self.patchify(x)) + self.pos[col_offset:col_offset + cols]  # (B, cols, rows, d)
        z = z.reshape(b, cols * cfg.freq_patches, cfg.d_model)
        bias = causal_bias(cols, cfg.freq_patches, cfg.heads, cfg.max_columns).to(z.device) if cfg.causal else None
        for blk in self.blocks:
            z = blk(z, bias)
        return self.norm(z)

    # ---- streaming (causal encoders only) ------------------------------------------------------
    # A token of column c sees columns c - max_columns + 1 .. c at every layer, however long the
    # stream: the sliding 8-s window of cached keys / values. On the first max_columns columns of a
    # stream this is exactly :meth:`forward` on that window; later, a window's first tokens carry
    # context from before the window (their cached values were computed when they arrived).

    def _check_stream(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        if not cfg.causal:
            raise ValueError("streaming needs a causal encoder (ModelConfig.causal=True)")
        if x.dim() != 3 or x.shape[1] != cfg.n_mels or x.shape[2] % cfg.patch or x.shape[2] == 0:
            raise ValueError(f"encoder input must be (B, {cfg.n_mels}, T) with T a positive multiple of {cfg.patch}; "
                             f"got {tuple(x.shape)}")

    def _embed_columns(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F, 16 c)`` normalised log-mel -> ``(B, 5 c, d)`` patch embeddings + the frequency
        position (a causal encoder's position embedding is the same for every column)."""
        b = x.shape[0]
        z = self.patch_embed(self.patchify(x)) + self.pos[0]  # (B, c, rows, d)
        return z.reshape(b, -1, self.cfg.d_model)

    def forward_banded(self, x: torch.Tensor) -> torch.Tensor:
        """Offline reference of the streaming encoder: ``(B, F, T)`` normalised log-mel of a whole
        stream (any length, a multiple of 16 frames) -> ``(B, P, d)`` tokens, with the block-causal
        sliding-window mask over all ``T / 16`` columns at once (memory ``O(P^2)``: for tests and
        short stems; :meth:`step` computes the same thing column block by column block)."""
        self._check_stream(x)
        cfg = self.cfg
        z = self._embed_columns(x)
        bias = causal_bias(x.shape[2] // cfg.patch, cfg.freq_patches, cfg.heads, cfg.max_columns).to(z.device)
        for blk in self.blocks:
            z = blk(z, bias)
        return self.norm(z)

    def step(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             past_age: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One streaming step over ``c`` new columns (``1 <= c <= max_columns``).

        ``x (B, F, 16 c)`` normalised log-mel of the new columns; ``k_cache, v_cache (L, B, H, S,
        d/H)`` (or sequences of L ``(B, H, S, d/H)`` tensors) every layer's cached keys / values of
        ``S`` earlier tokens (a ring: any slot order);
        ``past_age (S,)`` float: columns between each cached token's column and the first new one
        (>= 1; ``>= max_columns`` for empty slots). Returns ``tokens (B, 5 c, d)`` and the new
        tokens' ``k, v (L, B, H, 5 c, d/H)`` for the caller to write into the ring."""
        self._check_stream(x)
        cfg = self.cfg
        z = self._embed_columns(x)
        bias_past, bias_new = step_biases(past_age.float(), z.shape[1], cfg.freq_patches,
                                          alibi_slopes(cfg.heads).to(z.device), cfg.max_columns)
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            z, k, v = blk.step(z, k_cache[i], v_cache[i], bias_past, bias_new)
            ks.append(k)
            vs.append(v)
        return self.norm(z), torch.stack(ks), torch.stack(vs)

    def empty_cache(self, batch: int = 1, slots: int | None = None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(k_cache, v_cache, past_age)`` of an empty ring of ``slots`` tokens (default
        ``max_columns * freq_patches`` = 250): zeros and ages of ``max_columns`` (all masked)."""
        cfg = self.cfg
        s = slots or cfg.max_columns * cfg.freq_patches
        shape = (cfg.depth, batch, cfg.heads, s, cfg.d_model // cfg.heads)
        return (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype),
                torch.full((s,), float(cfg.max_columns)))


class FiLMPredictor(nn.Module):
    """Per-patch MLP predicting the missing stem's tokens, FiLM-conditioned on a text embedding.

    ``z (B, P, d)``, ``c (B, C)`` -> ``(B, P, d)``. Every hidden layer: ``h <- ReLU(g(c)*h + b(c))``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.predictor_hidden
        dims = [cfg.d_model] + [h] * (cfg.predictor_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.film = nn.ModuleList(nn.Linear(cfg.text_dim, 2 * h) for _ in self.layers)
        for f in self.film:  # start as identity modulation
            nn.init.zeros_(f.weight)
            nn.init.zeros_(f.bias)
        self.out = nn.Linear(h, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=1e-6)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = z
        for lin, film in zip(self.layers, self.film):
            gamma, beta = film(c).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, H) each
            h = F.relu((1.0 + gamma) * lin(h) + beta)
        return self.norm(self.out(h))


class ClassPredictor(nn.Module):
    """Stem-JEPA baseline: a learned embedding of 4 classes concatenated to every patch.

    ``z (B, P, d)``, ``k (B,)`` class indices -> ``(B, P, d)``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.predictor_hidden
        self.embed = nn.Embedding(cfg.n_classes, cfg.d_model)
        dims = [2 * cfg.d_model] + [h] * (cfg.predictor_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(h, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=1e-6)

    def forward(self, z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        e = self.embed(k.long()).unsqueeze(1).expand(-1, z.shape[1], -1)
        h = torch.cat([z, e], dim=-1)
        for lin in self.layers:
            h = F.relu(lin(h))
        return self.norm(self.out(h))


class BeatHead(nn.Module):
    """8 linear probes per 160-ms column on the frequency-concatenated tokens.

    ``(B, P, d)`` -> ``(B, cols * 8)`` beat logits at 50 Hz.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.probe = nn.Linear(cfg.freq_patches * cfg.d_model, cfg.beat_probes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, p, d = z.shape
        cols = p // self.cfg.freq_patches
        return self.probe(z.reshape(b, cols, self.cfg.freq_patches * d)).reshape(b, cols * self.cfg.beat_probes)


class StemJEPA(nn.Module):
    """Context encoder, EMA target encoder, predictor, beat head and the phase-1 temperature."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.encoder = Encoder(cfg)
        self.target_encoder = copy.deepcopy(self.encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        self.predictor = FiLMPredictor(cfg) if cfg.conditioning == "film" else ClassPredictor(cfg)
        self.beat_head = BeatHead(cfg)
        self.log_temp = nn.Parameter(torch.tensor(math.log(0.1)))  # InfoNCE temperature (phase 1)

    def predict(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.predictor(z, cond)

    @torch.no_grad()
    def ema_update(self, tau: float) -> None:
        """target <- tau * target + (1 - tau) * online."""
        for t, o in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            t.mul_(tau).add_(o.detach(), alpha=1.0 - tau)

    @torch.no_grad()
    def sync_target(self) -> None:
        self.target_encoder.load_state_dict(self.encoder.state_dict())


def retrieval_normalise(m: torch.Tensor) -> torch.Tensor:
    """``(..., d)`` pooled embeddings -> layer norm (no affine, eps 1e-5) -> L2: the space retrieval
    ranks in. Training's InfoNCE uses it too, so training and evaluation compare the same vectors.
    Written out rather than ``F.layer_norm(m, m.shape[-1:])``, whose shape argument the ONNX tracer
    cannot keep static: the exported predictor graph runs this very function (export/graphs.py)."""
    m = m if m.dtype == torch.float64 else m.float()  # fp32 at least, even under bf16 autocast
    m = m - m.mean(dim=-1, keepdim=True)
    m = m * torch.rsqrt(m.pow(2).mean(dim=-1, keepdim=True) + 1e-5)
    return F.normalize(m, dim=-1)


def pool_embedding(tokens: torch.Tensor) -> torch.Tensor:
    """Retrieval embedding: ``(B, P, d)`` -> mean over patches (fp32) -> layer norm -> L2 ``(B, d)``.
    The torch side of the one pooling; ``engine.contract.pool`` is the numpy side."""
    return retrieval_normalise((tokens if tokens.dtype == torch.float64 else tokens.float()).mean(dim=1))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

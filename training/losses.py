"""Losses of the three training phases."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def jepa_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised MSE per patch, ``2 - 2 cos(pred, target)``, averaged. ``(B, P, d)`` each."""
    pred, target = pred.float(), target.detach().float()  # fp32 even under bf16 autocast
    return (2.0 - 2.0 * F.cosine_similarity(pred, target, dim=-1)).mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, log_temp: torch.Tensor, *, keys: torch.Tensor | None = None,
             queue: torch.Tensor | None = None, queue_keys: torch.Tensor | None = None,
             max_temp: float = 1.0, center: bool = False, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` ``(B, d)``; learnable temperature
    ``exp(log_temp)`` (clamped to [0.01, max_temp]).

    ``max_temp``: a cap below 1 keeps an encoder trained from scratch from escaping to a high
    temperature: while its embeddings are still uninformative, raising the temperature lowers the
    loss to chance at once, and at the cap of 1 the gradients are too flat to learn (phase 1
    stayed at chance that way).

    ``center``: subtract each side's batch mean (``a`` rows' mean from ``a``, ``b``'s from ``b``,
    and from the queue) before normalising. Mixes and single stems sit in different regions of
    the space, and at initialisation some stems are near every mix (hubs): a hub column raises the
    loss of every row above chance, and the fastest way down is to make all embeddings equal
    (collapse), a stationary point where the gradients vanish. Centred, every column's mean logit
    is about zero, a common component changes nothing, and only what tells the rows apart is left.

    ``groups (B,)``: int group of each row; a row's negatives are then the rows of its own group
    only (batches made of groups that share the target's category: which instruments a mix holds
    cannot tell its own stem from the others', see docs/report/generalisation.md).

    ``queue (Q, d)``: extra negatives for the ``a -> b`` direction (earlier steps' ``b`` rows).
    ``keys (B,)`` / ``queue_keys (Q,)``: int64 identity of what each row shows (a stem); a negative
    with the same key as the row's positive is another view of the positive and is masked out.
    """
    # fp32 even under bf16 autocast: early in training the cosines differ in the third decimal
    with torch.autocast(a.device.type, enabled=False):
        a, b = a.float(), b.float()
        b_mean = b.mean(0, keepdim=True)
        if center:
            a, b = a - a.mean(0, keepdim=True), b - b_mean
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        temp = log_temp.float().exp().clamp(0.01, max_temp)
        logits = a @ b.t() / temp  # (B, B)
        n = a.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=a.device)
        if keys is not None:
            same = (keys[:, None] == keys[None, :]) & ~eye
            logits = logits.masked_fill(same, float("-inf"))
        if groups is not None:
            logits = logits.masked_fill((groups[:, None] != groups[None, :]) & ~eye, float("-inf"))
        logits_ab = logits
        if queue is not None and len(queue):
            qv = queue.float() - b_mean if center else queue.float()
            lq = a @ F.normalize(qv, dim=-1).t() / temp  # (B, Q)
            if keys is not None and queue_keys is not None:
                lq = lq.masked_fill(keys[:, None] == queue_keys[None, :], float("-inf"))
            logits_ab = torch.cat([logits, lq], dim=1)
    labels = torch.arange(n, device=a.device)
    return 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits.t(), labels))


def widen_beat_targets(beats_s, n_frames: int, fps: float, widen: int = 1, neighbour: float = 0.5) -> torch.Tensor:
    """Beat times (s) -> frame targets ``(n_frames,)`` at ``fps`` Hz: 1 on the beat frame,
    ``neighbour`` on the ``widen`` frames either side (label widening)."""
    y = torch.zeros(n_frames)
    for t in beats_s:
        i = int(round(float(t) * fps))
        if 0 <= i < n_frames:
            for j in range(max(0, i - widen), min(n_frames, i + widen + 1)):
                if j != i:
                    y[j] = max(float(y[j]), neighbour)
            y[i] = 1.0
    return y


def beat_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: float = 5.0) -> torch.Tensor:
    """Binary cross-entropy on beat logits ``(B, T)`` against widened targets ``(B, T)``."""
    w = torch.tensor(pos_weight, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=w)

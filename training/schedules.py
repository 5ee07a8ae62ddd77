"""Schedules as pure functions of the step, so a resumed run continues exactly."""
from __future__ import annotations

import math


def lr_at(step: int, *, base: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * progress))


def ema_tau_at(step: int, *, start: float, end: float, total: int) -> float:
    """EMA momentum rising linearly from ``start`` to ``end`` over ``total`` steps (then flat)."""
    if total <= 0:
        return end
    return start + (end - start) * min(1.0, step / total)

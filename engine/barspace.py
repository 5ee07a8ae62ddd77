"""The bar-pointer state space of the live tracker (:class:`engine.tracker.CausalBeatTracker`).

After the bar-pointer models of Whiteley et al. and Krebs et al. A *block* is one beat of a bar of
a meter: ``(M, b)`` with ``M`` in ``meters`` (default 4 and 3 beats a bar) and ``b`` in ``[0, M)``
(``b = 0``: the downbeat). Every block holds a copy of the beat-pointer states of
:class:`engine.beatspace.BeatStateSpace`, ``(interval tau, phase phi)`` in frames. The phase
advances one frame at a time; at the end of a beat (``phi = tau - 1``) the mass moves to the next
beat of the bar, ``(M, b + 1 mod M)``, phase 0, with the interval drawn from the beat-pointer's
tempo transition (so tempo may change at every beat). At the end of a bar a fraction
``meter_switch`` moves to the other meters' downbeats. That makes ``len(meters) * 1449`` states at
50 fps, 55-215 BPM (intervals of 14 to 55 frames); the tracker adds its one no-beat state beside them.

State ``i`` of the space is state ``i % block_size`` of the beat-pointer space in block
``i // block_size``: blocks are laid out one after the other, in the order of ``meters`` and, within
a meter, of the beat in the bar.
"""
from __future__ import annotations

import numpy as np

from .beatspace import BeatStateSpace


class BarStateSpace:
    """Blocks ``(meter, beat in bar)`` of beat-pointer states; see the module docstring.

    ``beat``: the beat-pointer space of one block (``S1 = block_size`` states); ``meters``: the
    meters, beats a bar, without repeats; ``block_meter``, ``block_beat``: ``(B,)`` meter and beat
    in the bar of each of the ``B = n_blocks`` blocks; ``n_states = B * S1``; ``first``, ``last``:
    ``(B, K)`` state indices of phase 0 and of the last phase of each of the ``K`` intervals of
    each block; ``block_trans_t``: ``(B, B)`` block transition at the end of a beat, transposed
    (rows: to, columns: from); ``beat_region``, ``down_region``: ``(n_states,)`` bool, the beat
    regions of every block and of the downbeat blocks; ``init``: ``(n_states,)`` the entry
    distribution of the tracking states (sums to 1).
    """

    def __init__(self, fps: float = 50.0, min_bpm: float = 55.0, max_bpm: float = 215.0,
                 lambda_tempo: float = 30.0, lambda_obs: float = 8.0, meters=(4, 3), meter_switch: float = 1e-3):
        meters = tuple(dict.fromkeys(int(m) for m in meters))
        if not meters or min(meters) < 1:
            raise ValueError(f"meters must be positive beat counts, got {meters}")
        self.beat = bs = BeatStateSpace(fps, min_bpm, max_bpm, lambda_tempo, lambda_obs)
        self.meters = meters
        blocks = [(m, b) for m in meters for b in range(m)]
        self.block_meter = np.array([m for m, _ in blocks])
        self.block_beat = np.array([b for _, b in blocks])
        nb, s1 = len(blocks), bs.n_states
        self.n_blocks, self.block_size = nb, s1
        self.n_states = nb * s1
        off = np.arange(nb)[:, None] * s1
        self.first = off + bs.first[None, :]  # (B, K) phase 0 of each interval of each block
        self.last = off + bs.last[None, :]
        # block transition at the end of a beat: rows = from, cols = to
        bt = np.zeros((nb, nb))
        index = {blk: i for i, blk in enumerate(blocks)}
        for i, (m, b) in enumerate(blocks):
            nxt = index[(m, (b + 1) % m)]
            others = [index[(m2, 0)] for m2 in meters if m2 != m] if b == m - 1 else []
            bt[i, nxt] = 1.0 - (meter_switch if others else 0.0)
            for j in others:
                bt[i, j] += meter_switch / len(others)
        self.block_trans_t = np.ascontiguousarray(bt.T)
        region = np.tile(bs.beat_mask, nb)
        down = np.repeat(self.block_beat == 0, s1)
        self.beat_region = region
        self.down_region = region & down
        # entry distribution of the tracking states: every meter alike, uniform within it; a hair
        # more on the downbeat so that, without downbeat evidence, bars are still counted one way
        w = np.array([(1.0 + 1e-6 * (b == 0)) / m for m, b in blocks])
        w /= w.sum()
        self.init = np.repeat(w / s1, s1)

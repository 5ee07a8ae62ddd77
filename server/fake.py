"""A stand-in for ``engine.pipeline.Matcher`` with the same interface and no model.

It lets the protocol, control, MIDI and subscriber tests (and a Max patch author without a trained
model: ``python -m server --fake``) exercise the whole server: audio really flows through the ring
and hops are cut from it exactly as the real matcher does, but the "matches" are derived from the
hop's RMS and the "beats" are a fixed 120 BPM grid.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from engine.beats import BeatState
from engine.ring import RingBuffer

SR = 16000


@dataclass
class FakeMatch:
    stem_id: str
    track_id: str
    label: str
    category: str
    offset: float
    score: float


@dataclass
class FakeHop:  # same fields as engine.pipeline.HopResult
    stream_time: float
    end_sample: int
    hop_index: int
    ready: bool
    matches: dict
    beat: BeatState
    activation: np.ndarray
    activation_time: float
    timings: dict
    counters: dict


class FakeLibrary:
    def __init__(self, n_tracks=4, path="<fake>"):
        self.path = path
        cats = ["drums", "bass", "other", "vocals"]
        self.stems = [(f"t{t}", f"t{t}-{c}", c, c) for t in range(n_tracks) for c in cats]

    def __len__(self):
        return len(self.stems)

    @property
    def n_tracks(self):
        return len({s[0] for s in self.stems})


class FakeMatcher:
    def __init__(self, library=None, instruments=("drums",), k=5, hop_ms=160, window_s=8.0,
                 tempo=120.0, work_s=0.0, restrict_category=False):
        self.library = library or FakeLibrary()
        self.instruments = list(instruments)
        self.k = int(k)
        self.hop = int(round(hop_ms * SR / 1000))
        self.window = int(window_s * SR)
        self.ring = RingBuffer(int(window_s * SR) + 4 * SR)
        self.tempo = tempo
        self.work_s = work_s  # simulated inference time per hop
        self.restrict_category = restrict_category
        self.reset()

    # -- control ------------------------------------------------------------------------------
    def set_instruments(self, names):
        names = [str(n) for n in names]
        if not names or any(not n.strip() for n in names):
            raise ValueError("instrument names must be non-empty")
        self.instruments = names

    def set_k(self, k):
        if int(k) < 1:
            raise ValueError("k must be >= 1")
        self.k = int(k)

    def set_library(self, lib):
        self.library = lib

    def set_hop(self, ms):
        self.hop = int(round(float(ms) * SR / 1000))

    def set_restrict_category(self, on):
        self.restrict_category = bool(on)

    def reset(self):  # also used as resync() after a pause
        self.next_end = self.ring.written + self.hop
        self.hops = 0
        self.drops = 0

    # -- the hop ------------------------------------------------------------------------------
    def process_hop(self):
        w = self.ring.written
        if w < self.next_end:
            return None
        t0 = time.perf_counter()
        end = self.next_end
        late = (w - end) // self.hop  # hops that are already complete behind this one
        if late > 0:
            self.drops += int(late)
            end += int(late) * self.hop
        self.next_end = end + self.hop
        x = self.ring.read(max(self.ring.oldest(), end - self.hop), end)
        self.ring.mark_read(end)
        rms = float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0
        if self.work_s:
            time.sleep(self.work_s)
        matches = {}
        for i, inst in enumerate(self.instruments):
            stems = self.library.stems
            ms = []
            for r in range(min(self.k, len(stems))):
                tr, sid, lab, cat = stems[(i + r) % len(stems)]
                ms.append(FakeMatch(sid, tr, lab, cat, offset=round(end / SR % 30.0, 3), score=1.0 - 0.1 * r - rms))
            matches[inst] = ms
        st = end / SR
        period = 60.0 / self.tempo
        last = np.floor(st / period) * period
        n_act = self.hop // 320  # 50 Hz
        act_t = st - (np.arange(n_act)[::-1] + 0.5) / 50.0
        act = np.exp(-0.5 * ((act_t - np.round(act_t / period) * period) / 0.02) ** 2)
        beats = [float(b) for b in np.arange(np.ceil((st - self.hop / SR) / period) * period, st, period)]
        beat = BeatState(time=st, tempo=self.tempo, phase=float((st - last) / period) % 1.0, last_beat=float(last),
                         next_beats=np.array([last + period * j for j in (1, 2, 3, 4)]), confidence=0.9,
                         beats=beats)
        self.hops += 1
        dt = (time.perf_counter() - t0) * 1000
        return FakeHop(st, end, self.hops + self.drops - 1, True, matches, beat, act.astype(np.float32),
                       float(act_t[0]), {"total": dt},
                       {"hops": self.hops, "drops": self.drops, "overruns": self.ring.overruns})

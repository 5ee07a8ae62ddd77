"""The live beat and bar tracker: a causal forward algorithm over a bar-pointer state space with
an explicit "no beat" state.

State space: :class:`engine.barspace.BarStateSpace`, blocks ``(meter, beat in bar)`` of
beat-pointer states ``(interval tau, phase phi)`` (default meters 4 and 3, ``len(meters) * 1449``
states at 50 fps, 55-215 BPM). Beside them there is one **no-beat** state: it is left with
probability ``p_enter`` a frame (into every tracking state alike) and entered from every tracking
state with probability ``p_leave``.

Observations, per frame:

* ``r``: the beat activation ``a`` squeezed into ``[floor, 1 - floor]`` (``floor`` 0.05). For the
  ViT beat head (``source="head"``) it is first taken against its own background, tracked per
  position modulo ``background_period`` frames (8: the beat probes of one 160-ms encoder column,
  whose head draws a fixed ramp over the column on any sound; a steady tone gave a 187.5-BPM
  "beat" without this) -- it falls fast and rises slowly, so it follows the floor of the
  activation at each position: ``r = (a - bg) / (1 - bg)``, clipped to [0, 1]; after a second of
  frames fed ``gated`` (the hop's input below the signal threshold) the next sound starts a new
  background. The beat network (``source="net"``, the default) needs none: its activation is low
  wherever there is no beat. :data:`SOURCES` holds what differs between the two.
* beat region of a block (its first ``tau // lambda_obs`` phases): ``r``; elsewhere
  ``(1 - r) / (lambda_obs - 1)`` -- the beat-pointer's observation model;
* no-beat state: every frame scored as off the beat, ``none_weight * (1 - r) / (lambda_obs - 1)``.
  A tracking state gains on it only in its beat regions, by ``r (lambda_obs - 1) / (1 - r)``
  a frame, and loses there when ``r < 1 / lambda_obs``: only a pulse that keeps coming back where
  a tempo and phase expect it holds the mass away from the no-beat state; silence, noise, a tone
  or a chord hand it back. The entry and exit probabilities (network: ``p_enter`` 3e-3,
  ``p_leave`` 1e-6 a frame; head: 1e-2 and 1e-5) set how fast it locks and how long it holds
  through a break;
* with a downbeat activation ``d`` (squeezed like ``r``): the downbeat blocks' beat regions score
  ``d``, every other state -- other beats, off the beat, the no-beat state -- ``1 - d``, both
  raised to ``downbeat_power`` (default 0.2: the network's downbeat output is overconfident, and
  at full weight its wrong bar phases also pulled the beat phase and tempo; on the dev set --
  the validation splits of the varied and slowed renders -- 0.2 gave the best downbeat F of
  0, 0.2, 0.35, 0.5, 0.7, 1, 2, 3 and the best beat F and CMLt too); so a low ``d`` speaks
  against a downbeat here and for nothing else (noise cannot win a tracking state mass through
  it). Without one the tracker still runs: the bar position then carries no
  evidence, ``bar_confidence`` stays near ``1 / (2 M)`` and the beats are still counted on in bars
  of the likelier meter.

A **tempo prior** (``tempo_prior`` beta, default 0: none; ``tempo_centre`` c BPM) weights every
beat a tracking state completes at ``bpm`` by ``exp(-beta log2(bpm / c)^2)`` (at most 1), and the
entry into tracking alike. A tempo twice as fast completes twice as many beats, so the double-tempo
reading of a song with busy off-beats (eighth-note hats) pays per second what the true one does
not; a clear pulse still wins, since its evidence comes every beat too.

A **tempo input** (``process(..., tempo=(t, K), tempo_classes=(K,) BPM)``: the beat network's tempo
output, when it has one) weights every tracking state, each frame, by ``(p_c / max p) **
tempo_power`` for the class ``c`` nearest its tempo (``tempo_power`` default 0: not read). The
tracking mass is scaled back to what it was, so the input moves mass between tempi and never
towards or away from the no-beat state (it was not trained on music without a beat).

Beats are detected on the beat-level posterior (the blocks summed): a beat is found when the most
probable state's phase wraps (refractory half a beat), reported once its beat region has passed,
on the strongest activation frame of that region (as :func:`engine.beatspace.offline_beats` places
them), and only while the no-beat state holds less than half the mass. The forecast (next beats,
next downbeat) is the phase wrap to come plus the running mean (weight 0.2) of how far after
their wrap the reported beats were placed -- the filtered phase wraps on the activation's rising
edge, about a frame before its peak -- so that forecast and reported beats agree. Feeding an
activation whole, in chunks or frame by frame gives bit-identical results.

``confidence`` is ``P(tracking) * (mass within +-2 interval steps and +-0.1 beat of the best
state)``, mapped through a monotone calibration (``calibration``: knots ``(raw, calibrated)``,
default the source's in :data:`engine.beatcal.CALIBRATION_FILE`, fitted with ``python -m
training.beatcal``) so that it reads as the fraction of reported beats that are correct. The
calibration is fitted on beats reported, so it says nothing of the no-beat state, where none are:
there the confidence is the smaller of the calibrated and the raw value (the map's low end, fitted
on the least sure beats, would otherwise lift a raw 0.02 to a confidence of 0.2 when no beat is
heard).

What it reports is a :class:`engine.beatstate.BeatState`. :class:`BarStateSpace`, :class:`BeatState`,
:data:`CALIBRATION_FILE` and :func:`load_calibration` are imported here too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .barspace import BarStateSpace
from .beatcal import CALIBRATION_FILE, load_calibration
from .beatspace import BeatStateSpace, check_activation  # noqa: F401 (BeatStateSpace: re-exported)
from .beatstate import BeatState

_HIST = 64  # activation frames the tracker keeps (1.28 s at 50 fps)


#: what differs with the beat source (``Matcher.beat_source``): the beat network's activation is
#: clean and near 0 on a sound without a beat, so it is read as it is; the ViT beat head draws a
#: ramp over every 160-ms encoder column on any sound, which the per-position background removes,
#: and its weaker activation needs the quicker entry into tracking to lock at all
SOURCES = {"net": {"background_period": 0, "p_enter": 3e-3, "p_leave": 1e-6},
           "head": {"background_period": 8, "p_enter": 1e-2, "p_leave": 1e-5}}


class CausalBeatTracker:
    """Causal beat, bar and no-beat tracker over :class:`BarStateSpace`, one frame at a time.

    ``process(beat (t,), downbeat (t,) or None) -> BeatState``; chunking never changes the
    result. ``time_offset`` is the time (s) of the first activation frame after a reset.
    ``source``: the beat source, ``"net"`` or ``"head"``; the settings :data:`SOURCES` gives it
    (background, entry probability) are the defaults of those left None, and its calibration the
    default one. ``calibration``: ``(raw, calibrated)`` knots, a path to a calibration file, or
    None for the raw confidence; default the source's in :data:`CALIBRATION_FILE` when there.
    :meth:`retuned` makes a tracker with the same settings but those given.
    """

    def __init__(self, fps: float = 50.0, *, min_bpm: float = 55.0, max_bpm: float = 215.0,
                 lambda_tempo: float = 60.0, lambda_obs: float = 8.0, n_predict: int = 4,
                 time_offset: float = 0.0, refractory: float = 0.5, meters=(4, 3), meter_switch: float = 1e-3,
                 p_enter: float | None = None, p_leave: float | None = None, none_weight: float = 1.0,
                 none_prior: float = 0.9, floor: float = 0.05, background_period: int | None = None,
                 background_rise_s: float = 2.0, background_fall_s: float = 0.5, calibration="default",
                 source: str = "net", tempo_prior: float = 0.0, tempo_centre: float = 120.0,
                 downbeat_power: float = 0.2, tempo_power: float = 0.0):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {sorted(SOURCES)}, not {source!r}")
        self._kw = {k: v for k, v in locals().items() if k not in ("self", "fps", "__class__")}
        self.source = source
        p_enter = SOURCES[source]["p_enter"] if p_enter is None else p_enter
        p_leave = SOURCES[source]["p_leave"] if p_leave is None else p_leave
        background_period = SOURCES[source]["background_period"] if background_period is None else background_period
        self.space = BarStateSpace(fps, min_bpm, max_bpm, lambda_tempo, lambda_obs, meters, meter_switch)
        self.ss = self.space.beat  # the beat-level state space (intervals, phases)
        if not tempo_prior >= 0.0 or not tempo_centre > 0.0:
            raise ValueError(f"need tempo_prior >= 0 and tempo_centre > 0, got {tempo_prior}, {tempo_centre}")
        if not downbeat_power >= 0.0:
            raise ValueError(f"need downbeat_power >= 0, got {downbeat_power}")
        self.downbeat_power = float(downbeat_power)
        if not tempo_power >= 0.0:
            raise ValueError(f"need tempo_power >= 0, got {tempo_power}")
        self.tempo_power = float(tempo_power)
        self._tempo_classes: np.ndarray | None = None  # (K,) BPM of the tempo input's classes
        self._state_class: np.ndarray | None = None  # (n_states,) the class of each tracking state
        # tempo prior: every beat of interval tau is weighted exp(-tempo_prior * log2(bpm / centre)^2),
        # at most 1; a tempo twice as fast passes twice as many beats, so an octave pays per second
        bpm = 60.0 * fps / self.ss.intervals
        w = np.exp(-float(tempo_prior) * np.log2(bpm / float(tempo_centre)) ** 2)
        self._beat_w = w / w.max()  # (K,)
        entry = self.space.init * np.tile(self._beat_w[self.ss.state_tempo], self.space.n_blocks)
        # (n_states,) entry distribution of the tracking states
        self._init = entry / entry.sum() if tempo_prior > 0.0 else self.space.init
        self._prior = float(tempo_prior) > 0.0
        self.fps = float(fps)
        self.n_predict = int(n_predict)
        self.refractory = float(refractory)
        self.p_enter, self.p_leave = float(p_enter), float(p_leave)
        self.none_prior = float(none_prior)
        self.floor = float(floor)
        self.none_weight = float(none_weight)
        self.background = int(background_period) > 0
        self.bg_period = max(1, int(background_period))
        # per-position background: updated once every `bg_period` frames
        per = self.bg_period / self.fps
        self._rise = 1.0 - np.exp(-per / background_rise_s)
        self._fall = 1.0 - np.exp(-per / background_fall_s)
        if isinstance(calibration, str) and calibration == "default":
            calibration = CALIBRATION_FILE
        if isinstance(calibration, (str, Path)):
            calibration = load_calibration(calibration, source)
        self.calibration = None if calibration is None else (np.asarray(calibration[0], dtype=np.float64),
                                                             np.asarray(calibration[1], dtype=np.float64))
        self.reset(time_offset)

    def retuned(self, **changes) -> "CausalBeatTracker":
        """A new tracker (reset) with this one's settings, but ``changes``."""
        return CausalBeatTracker(self.fps, **{**self._kw, **changes})

    def reset(self, time_offset: float | None = None) -> None:
        if time_offset is not None:
            self.time_offset = float(time_offset)
        sp = self.space
        self.alpha = (1.0 - self.none_prior) * self._init
        self.none = self.none_prior
        self._new = np.empty_like(self.alpha)
        self.frame = 0  # frames processed
        self._prev_frac = None
        self._last_beat_frame: float | None = None
        self._marg = np.zeros(sp.block_size)
        self._blocks = np.zeros(sp.n_blocks)
        self._map = 0  # best beat-level state
        self._hist = np.zeros(_HIST, dtype=np.float64)  # recent activations, indexed frame % _HIST
        self._bg = np.zeros(self.bg_period)
        self._bg_seen = np.zeros(self.bg_period, dtype=bool)
        self._gated = 0  # frames in a row fed below the signal threshold
        self._pending: tuple[float, int] | None = None  # (detected beat frame, frame to report at)
        self._bar_choice: tuple[int, int] | None = None  # (meter, beat in bar) of the last reported beat
        self._lead = 0.0  # frames from a beat's phase wrap to where it is placed (running mean)

    # ------------------------------------------------------------------ one frame
    def _residual(self, a: float, gated: bool = False) -> float:
        """The activation (against its per-position background, when the source has one),
        squeezed into [floor, 1 - floor]; ``gated``: the input is below the signal threshold
        (``a`` counts as 0; after a second of that the next sound starts a new background)."""
        f = self.floor
        self._gated = self._gated + 1 if gated else 0
        if not self.background:
            return f if gated else f + (1.0 - 2.0 * f) * a
        j = self.frame % self.bg_period
        if gated:  # no activation: the floor
            if self._gated >= self.fps:
                self._bg_seen[:] = False
            elif self._bg_seen[j]:
                self._bg[j] -= self._fall * self._bg[j]
            return f
        if not self._bg_seen[j]:
            self._bg_seen[j] = True
            self._bg[j] = a
        bg = self._bg[j]
        r = min(max((a - bg) / max(1.0 - bg, 1e-6), 0.0), 1.0)
        self._bg[j] = bg + (self._rise if a > bg else self._fall) * (a - bg)
        return f + (1.0 - 2.0 * f) * r

    def _tempo_weights(self, tempo: np.ndarray, classes) -> np.ndarray:
        """``(t, K)`` tempo-class probabilities -> ``(t, K)`` weights of the classes,
        ``(p / max p) ** tempo_power`` (a tracking state takes its class's: ``_state_class``)."""
        classes = np.asarray(classes, np.float64).reshape(-1)
        if tempo.ndim != 2 or tempo.shape[1] != len(classes) or len(classes) < 2:
            raise ValueError(f"tempo activation of shape {tempo.shape} for {len(classes)} tempo classes")
        if self._tempo_classes is None or not np.array_equal(classes, self._tempo_classes):
            lc = np.log2(classes)
            bpm = 60.0 * self.fps / self.ss.intervals  # (intervals,)
            u = np.clip(np.round((np.log2(bpm) - lc[0]) / (lc[1] - lc[0])), 0, len(classes) - 1).astype(int)
            self._state_class = np.tile(u[self.ss.state_tempo], self.space.n_blocks)
            self._tempo_classes = classes.copy()
        p = np.nan_to_num(np.asarray(tempo, np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(0.0, None) + 1e-6
        return (p / p.max(axis=1, keepdims=True)) ** self.tempo_power  # (t, K)

    def _step(self, a: float, d: float | None, gated: bool = False,
              tempo_w: np.ndarray | None = None) -> tuple[float, int] | None:
        """Advance one frame; returns (frame of the reported beat, its beat in the bar) or None.
        ``tempo_w``: ``(K,)`` weights of the tempo classes from a tempo input (the tracking states'
        shares of the tracking mass move by them; the tracking mass itself does not)."""
        sp, ss = self.space, self.ss
        al, new = self.alpha, self._new
        none = self.none
        if self.frame > 0:
            new[1:] = al[:-1]
            new[sp.first] = sp.block_trans_t @ (al[sp.last] @ ss.trans)
            if self._prior:
                new[sp.first] *= self._beat_w
            tracking = 1.0 - none
            new *= 1.0 - self.p_leave
            new += (none * self.p_enter) * self._init
            none = none * (1.0 - self.p_enter) + tracking * self.p_leave
        else:
            new[:] = al
        self._hist[self.frame % _HIST] = a
        rb = self._residual(a, gated)
        pn = (1.0 - rb) / (ss.lambda_obs - 1.0)
        new *= pn
        new[sp.beat_region] *= rb / pn
        if d is not None:  # a downbeat region explains d, every other state 1 - d
            f = self.floor
            dd = f + (1.0 - 2.0 * f) * d
            new[sp.down_region] *= (dd / (1.0 - dd)) ** self.downbeat_power
        if tempo_w is not None:  # moves mass between tempi, never between tracking and no beat
            before = new.sum()
            new *= tempo_w[self._state_class]
            after = new.sum()
            if after > 0:
                new *= before / after
        none *= self.none_weight * pn  # no beat anywhere: every frame scored as off the beat
        z = new.sum() + none
        if not z > 0 or not np.isfinite(z):
            new[:] = self._init * (1.0 - self.none_prior)
            none = self.none_prior
        else:
            new /= z
            none /= z
        self.alpha, self._new, self.none = new, al, none
        blocks = new.reshape(sp.n_blocks, sp.block_size)
        self._marg = blocks.sum(axis=0)
        self._blocks = blocks.sum(axis=1)
        s = int(np.argmax(self._marg))
        self._map = s
        frac = float(ss.state_frac[s])
        t = self.frame
        out = None
        prev = self._prev_frac
        if prev is not None and frac < prev and (frac - prev) % 1.0 < 0.5:  # wrapped forward
            tau = float(ss.state_interval[s])
            cand = t - float(ss.state_phase[s])
            if self._pending is None and (self._last_beat_frame is None
                                          or cand - self._last_beat_frame >= self.refractory * tau):
                region = max(1, int(tau) // int(ss.lambda_obs))
                self._pending = (cand, int(np.ceil(cand)) + region)
        if self._pending is not None and t >= self._pending[1]:
            # place the beat on the strongest activation of its region (as offline), now that it is past
            cand, end = self._pending
            lo = max(int(np.floor(cand)) - 1, t - _HIST + 1, 0)
            frames = np.arange(lo, end + 1)
            beat = float(frames[int(np.argmax(self._hist[frames % _HIST]))])
            self._pending = None
            if self.none < 0.5:
                out = (beat, self._count_bar(beat, float(ss.state_interval[s])))
                self._last_beat_frame = beat
                self._lead += 0.2 * ((beat - cand) - self._lead)
            else:
                self._bar_choice = None
        self._prev_frac = frac
        self.frame += 1
        return out

    # ------------------------------------------------------------------ read-outs
    def _shares(self) -> tuple[np.ndarray, np.ndarray]:
        """(share of each meter, share of each block) of the tracking mass."""
        sp = self.space
        tot = self._blocks.sum()
        blocks = self._blocks / tot if tot > 0 else np.zeros_like(self._blocks)
        return np.array([blocks[sp.block_meter == m].sum() for m in sp.meters]), blocks

    def _block(self, meter: int, b: int) -> int:
        sp = self.space
        return int(np.flatnonzero((sp.block_meter == meter) & (sp.block_beat == b))[0])

    def _count_bar(self, beat: float, tau: float) -> int:
        """The place in the bar of a beat being reported. Bars are counted on from the last beat
        (the next beat is the next place) unless the posterior prefers another (meter, place) by
        more than 2:1 -- so that without downbeat evidence, where every place is alike, the count
        runs on and flickers of evidence do not move the bar."""
        sp = self.space
        meters, blocks = self._shares()
        best = int(np.argmax(blocks))
        if self._bar_choice is not None and self._last_beat_frame is not None:
            m, b = self._bar_choice
            b = (b + max(1, int(round((beat - self._last_beat_frame) / tau)))) % m
            counted = blocks[self._block(m, b)]
            if not blocks[best] > 2.0 * counted:
                self._bar_choice = (m, b)
                return b
        self._bar_choice = (int(sp.block_meter[best]), int(sp.block_beat[best]))
        return self._bar_choice[1]

    def _bar(self, beat_start: float, tau: float) -> tuple[int, int, float, float]:
        """(meter, beat in bar, meter share, bar share) of the beat that started at frame
        ``beat_start``: counted on from the last reported beat's place."""
        sp = self.space
        meters, blocks = self._shares()
        if self._bar_choice is None or self._last_beat_frame is None:
            best = int(np.argmax(blocks))
            m, b = int(sp.block_meter[best]), int(sp.block_beat[best])
        else:
            m, b = self._bar_choice
            b = (b + max(0, int(round((beat_start - self._last_beat_frame) / tau)))) % m
        return m, b, float(meters[sp.meters.index(m)]), float(blocks[self._block(m, b)])

    def _near(self) -> np.ndarray:
        """Beat-level states within 0.1 beat of the best state's phase."""
        ss = self.ss
        d = np.abs(ss.state_frac - float(ss.state_frac[self._map]))
        return np.minimum(d, 1.0 - d) <= 0.1

    def _tempo_interval(self) -> tuple[float, int]:
        """Refined beat interval (frames): the mean over the best interval and two either side,
        weighted by their mass near the best phase (the mass spread over every phase, as the no-beat
        state's hands it back, would pull it to the longer intervals, which have more phases)."""
        ss = self.ss
        k = int(ss.state_tempo[self._map])
        pk = np.bincount(ss.state_tempo, weights=np.where(self._near(), self._marg, 0.0), minlength=len(ss.intervals))
        lo, hi = max(0, k - 2), min(len(pk), k + 3)
        w = pk[lo:hi]
        iv = float((w * ss.intervals[lo:hi]).sum() / w.sum()) if w.sum() > 0 else float(ss.intervals[k])
        return iv, k

    def raw_confidence(self) -> float:
        """``P(tracking) * `` the tracking mass near the best tempo and phase (uncalibrated)."""
        ss = self.ss
        tot = self._marg.sum()
        if not tot > 0:
            return 0.0
        k = int(ss.state_tempo[self._map])
        near = (np.abs(ss.state_tempo - k) <= 2) & self._near()
        return float(min(1.0, self._marg[near].sum() / tot) * (1.0 - self.none))

    def calibrate(self, raw: float) -> float:
        if self.calibration is None:
            return raw
        return float(np.interp(raw, *self.calibration))

    def state(self, beats: list | None = None, downbeats: list | None = None) -> BeatState:
        ss = self.ss
        s = self._map
        iv, _ = self._tempo_interval()
        phase_frames = float(ss.state_phase[s])
        tau = float(ss.state_interval[s])
        frac = phase_frames / tau
        now = self.frame - 1  # frame index of the last processed frame
        first_next = now + (tau - phase_frames) + self._lead
        nxt = self.time_offset + (first_next + iv * np.arange(self.n_predict)) / self.fps
        meter, b, meter_conf, bar_conf = self._bar(now - phase_frames, tau)
        to_down = (meter - 1 - b) % meter  # beats after the next one until a downbeat
        last = None if self._last_beat_frame is None else self.time_offset + self._last_beat_frame / self.fps
        no_beat = bool(self.none >= 0.5)
        raw = self.raw_confidence()
        conf = min(raw, self.calibrate(raw)) if no_beat else self.calibrate(raw)  # see the module text
        return BeatState(time=self.time_offset + max(now, 0) / self.fps, tempo=60.0 * self.fps / iv, phase=frac,
                         last_beat=last, next_beats=nxt, confidence=min(1.0, conf),
                         beats=list(beats or []), frames=self.frame, no_beat=no_beat,
                         beat_presence=float(1.0 - self.none), meter=meter, meter_confidence=meter_conf,
                         beat_in_bar=b, bar_phase=(b + frac) / meter,
                         next_downbeat=self.time_offset + (first_next + to_down * iv) / self.fps,
                         bar_confidence=bar_conf, downbeats=list(downbeats or []))

    def process(self, act_chunk: np.ndarray, downbeat_chunk: np.ndarray | None = None, *,
                gated: bool = False, tempo: np.ndarray | None = None, tempo_classes=None) -> BeatState:
        """Feed ``(t,)`` beat activations and, optionally, ``(t,)`` downbeat activations (values
        outside [0, 1] clipped, non-finite -> 0); returns the state after the last frame, with
        ``beats`` / ``downbeats`` = the beat times (s) reported in this chunk. ``gated``: the
        chunk's input was below the signal threshold (its activation counts as 0). ``tempo``:
        ``(t, K)`` tempo-class probabilities of the same frames, ``tempo_classes`` their ``(K,)``
        BPM (log-spaced); read only when ``tempo_power`` > 0 and not ``gated``."""
        act = check_activation(act_chunk)
        down = None
        if downbeat_chunk is not None:
            down = check_activation(downbeat_chunk)
            if len(down) != len(act):
                raise ValueError(f"downbeat activation has {len(down)} frames, the beat activation {len(act)}")
            down = down.tolist()
        tw = None
        if tempo is not None and self.tempo_power > 0.0 and not gated:
            if tempo_classes is None:
                raise ValueError("a tempo activation needs its tempo_classes (BPM)")
            tempo = np.asarray(tempo)
            if len(tempo) != len(act):
                raise ValueError(f"tempo activation has {len(tempo)} frames, the beat activation {len(act)}")
            tw = self._tempo_weights(tempo, tempo_classes)
        beats, downs = [], []
        for i, a in enumerate(act.tolist()):
            r = self._step(a, None if down is None else down[i], gated, None if tw is None else tw[i])
            if r is not None:
                t = self.time_offset + r[0] / self.fps
                beats.append(t)
                if r[1] == 0:
                    downs.append(t)
        return self.state(beats, downs)

    def run(self, activation: np.ndarray, downbeat: np.ndarray | None = None, tempo=None,
            tempo_classes=None) -> np.ndarray:
        """Reset, process a whole activation, return every reported beat time (s)."""
        self.reset()
        return np.asarray(self.process(activation, downbeat, tempo=tempo, tempo_classes=tempo_classes).beats,
                          dtype=np.float64)

    def run_bars(self, activation: np.ndarray, downbeat: np.ndarray | None = None, tempo=None,
                 tempo_classes=None) -> tuple[np.ndarray, np.ndarray]:
        """Reset, process a whole activation; (beat times, downbeat times) reported (s)."""
        self.reset()
        st = self.process(activation, downbeat, tempo=tempo, tempo_classes=tempo_classes)
        return np.asarray(st.beats, dtype=np.float64), np.asarray(st.downbeats, dtype=np.float64)

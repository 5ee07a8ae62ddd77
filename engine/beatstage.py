"""The beat stage of the live matcher (:class:`engine.pipeline.Matcher`): which beat source a hop
runs, the beat network over each hop's new log-mel frames, and the causal tracker fed the
activation frames it has not seen yet.

**Beat source** (``beat_source``): ``"net"``, the default whenever the model directory ships the
causal beat and downbeat network (``beatnet.npz``, engine/beatnet.py), runs that network on every
hop's new log-mel frames (its state kept across hops, about 0.4 ms a hop; timed as ``beatnet``),
and its beat activation feeds the tracker in place of the beat head's, which is then not run;
its downbeat activation comes with the hop (``HopResult.downbeat_activation``). ``"head"``: the
ViT encoder's linear beat head (no downbeats): ``backend.beats(tokens)`` -> the window's 50 Hz
activation ``(T / 2,)``, or, streaming, the head's values per new column (engine/stream.py).

Of the window's activation only the values not yet seen (8 per 160-ms hop) go to the
:class:`CausalBeatTracker`; a gap (the first hop, a front-end restart) resets it on the first
value there. Beat activation frame ``m`` (50 Hz, counted from the stream origin ``o``) is at
``(o + 320 m + 280) / 16000`` s, the centre of its two log-mel frames (:meth:`MatcherBeats.act_time`;
the training side uses the same 17.5-ms offset).

:class:`MatcherBeats` is mixed into the matcher, which sets what it reads: ``backend``, ``fe``,
``sr``, ``W``, ``beat_fps``, ``frames_per_act``, ``streaming``, ``_shop``, ``_origin``,
``_frame0``; the stage owns ``beatnet``, ``beat_source``, ``tracker`` and its own state
(``_bnet``, ``_bact``, ``_bdone``, ``_act_next``).
"""
from __future__ import annotations

import numpy as np

from .beatnet import BeatNet, find_beatnet
from .beats import BeatState, CausalBeatTracker
from .hop import Stages


class MatcherBeats:
    """The matcher's beat stage (the module docstring)."""

    def _init_beats(self, beat_source: str | None, beatnet: BeatNet | None, tracker_kw: dict | None) -> None:
        """Choose the beat source and build the tracker (``tracker_kw``: extra arguments for it)."""
        self.beatnet = self._beat_network(beat_source, beatnet)
        self.beat_source = "net" if self.beatnet is not None else "head"
        self.tracker = CausalBeatTracker(self.beat_fps, **{"source": self.beat_source, **(tracker_kw or {})})
        if self.beatnet is not None:
            self._bnet = self.beatnet.stream()
            self._bact = np.zeros((2, self.W // self.frames_per_act), np.float32)  # the window's beat, downbeat
            K = self.beatnet.arch.tempo_bins
            self._btempo = np.zeros((self._bact.shape[1], K), np.float32) if K else None  # its tempo classes

    def _beat_network(self, source: str | None, net: BeatNet | None) -> BeatNet | None:
        """The beat network the hop runs (None: the beat head); see ``beat_source``."""
        if source not in (None, "net", "head"):
            raise ValueError(f"beat_source must be 'net', 'head' or None, not {source!r}")
        if source == "head":
            return None
        if net is None:
            path = find_beatnet(getattr(self.backend, "manifest", None))
            net = BeatNet.load(path) if path is not None else None
        if net is None:
            if source == "net":
                raise ValueError("beat_source='net' needs a model directory with the beat network (beatnet.npz, "
                                 "docs/model_dir.md) or a BeatNet")
            return None
        if net.frontend != self.fe or self.frames_per_act != 2:
            raise ValueError(f"the beat network's front end {net.frontend} does not match the model's {self.fe}")
        return net

    def _reset_beats(self) -> None:
        """A new stream: the tracker, the beat network and its window of activations start again."""
        self._act_next: int | None = None
        self.tracker.reset(0.0)
        if self.beatnet is not None:
            self._bnet.reset()
            self._bact[:] = 0.0
            if self._btempo is not None:
                self._btempo[:] = 0.0
            self._bdone = 0  # activation frames (from the origin) the beat network has produced

    def _restart_beats(self, f0: int) -> None:
        """A front-end restart at log-mel frame ``f0`` (from the origin, on the 50-Hz grid): the
        tracker starts again at the next hop, the network at activation frame ``f0 / 2``."""
        self._act_next = None
        if self.beatnet is not None:  # the network starts again on the same 50-Hz grid
            self._bnet.reset()
            self._bdone = f0 // self.frames_per_act

    def _push_beatnet(self, new: np.ndarray, st: Stages) -> None:
        """The hop's new log-mel frames ``(80, t)`` through the beat network (when it runs); its
        new beat and downbeat activations roll into the window's ``(2, W / 2)``."""
        if self.beatnet is not None:
            with st("beatnet"):
                a = self._bnet.push(new)
                n = len(a)
                if n:
                    k = min(n, self._bact.shape[1])
                    self._bact[:, :-k] = self._bact[:, k:]
                    self._bact[0, -k:] = a.beat[n - k:]
                    self._bact[1, -k:] = a.downbeat[n - k:]
                    if self._btempo is not None:
                        self._btempo[:-k] = self._btempo[k:]
                        self._btempo[-k:] = a.tempo[n - k:]
                    self._bdone += n

    def act_time(self, m: int) -> float:
        """Time (s) of 50-Hz activation frame ``m`` of the current stream."""
        fpa = self.frames_per_act * self.fe.hop
        return (self._origin + m * fpa) / self.sr + self.fe.frames_centre_s(self.frames_per_act)

    def _beats(self, tokens, T: int, end_frames: int, quiet: bool,
               st: Stages) -> tuple[BeatState, np.ndarray, float, np.ndarray | None, np.ndarray | None]:
        """The window's beat activation (the beat network's, run in ``_frontend``; or the beat
        head's, streaming: computed per new column) -> the values not yet seen -> the causal
        tracker (zeros when ``quiet``: it decays, never locks, in silence). Returns ``(tracker
        state, the new activation, time of its first value, the new downbeat activation or None, the
        new tempo-class probabilities (t, K) or None)``."""
        down = tempo = None
        if self.beatnet is not None:  # the window's part of what the network has produced
            n = min(T // self.frames_per_act, self._bdone - self._frame0 // self.frames_per_act)
            act, down = self._bact[0, self._bact.shape[1] - n:].copy(), self._bact[1, self._bact.shape[1] - n:].copy()
            if self._btempo is not None:
                tempo = self._btempo[len(self._btempo) - n:].copy()
            m_end = self._bdone
        else:
            with st("beat_head"):
                if self.streaming:  # computed per new column; the window's part
                    act = self._shop.act[len(self._shop.act) - T // self.frames_per_act:].copy()  # results keep theirs
                else:
                    act = np.asarray(self.backend.beats(tokens), dtype=np.float32).reshape(-1)  # (T/2,)
            m_end = (self._shop.done if self.streaming else end_frames) // self.frames_per_act
        with st("tracker"):
            m_start = m_end - len(act)
            if self._act_next is None or self._act_next < m_start:
                self._act_next = m_start
                self.tracker.reset(self.act_time(m_start))
            new_act = act[self._act_next - m_start:]
            new_down = None if down is None else down[self._act_next - m_start:]
            new_tempo = None if tempo is None else tempo[self._act_next - m_start:]
            if quiet:
                new_act = np.zeros_like(new_act)  # no onsets in silence: the tracker decays, never locks
                new_down = None if new_down is None else np.zeros_like(new_down)
            act_time = self.act_time(self._act_next)
            beat_state = self.tracker.process(new_act, new_down, gated=quiet, tempo=new_tempo,
                                              tempo_classes=None if new_tempo is None else self.beatnet.tempo_bpm)
            self._act_next = m_end
        return beat_state, new_act, act_time, new_down, new_tempo

"""Beat decoding from a 50 Hz beat activation, in one import:

* :class:`BeatStateSpace` and :func:`offline_beats` -- the beat-pointer state space and the
  offline Viterbi decoder (engine/beatspace.py);
* :class:`CausalBeatTracker` and :class:`BeatState` -- the live beat, bar and no-beat tracker over
  bar-pointer states built from that space, and what it reports (engine/tracker.py).
"""
from __future__ import annotations

from .beatspace import BeatStateSpace, check_activation, offline_beats
from .tracker import BarStateSpace, BeatState, CausalBeatTracker

__all__ = ["BarStateSpace", "BeatState", "BeatStateSpace", "CausalBeatTracker", "check_activation", "offline_beats"]

"""Beat decoding from a 50 Hz beat activation, in one import:

* :class:`BeatStateSpace` and :func:`offline_beats` -- the beat-pointer state space and the
  offline Viterbi decoder (engine/beatspace.py);
* :class:`CausalBeatTracker` and :class:`BeatState` -- the live beat, bar and no-beat tracker
  (engine/tracker.py) and what it reports (engine/beatstate.py);
* :class:`BarStateSpace` -- the tracker's bar-pointer states built from that space
  (engine/barspace.py); the calibration of its confidence is engine/beatcal.py.
"""
from __future__ import annotations

from .beatspace import BeatStateSpace, check_activation, offline_beats
from .tracker import BarStateSpace, BeatState, CausalBeatTracker

__all__ = ["BarStateSpace", "BeatState", "BeatStateSpace", "CausalBeatTracker", "check_activation", "offline_beats"]

"""In-process FluidSynth rendering (pyfluidsynth + ctypes float output), reverb and chorus off.

One :class:`Renderer` loads the soundfont once and renders any number of note/controller event
lists; ``system_reset`` between renders makes each render independent, so the stems of a song
sum to the render of the whole song (the synthesis is linear when effects are off).
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import gm
from .midi import Control, Note

BLOCK = 64  # FluidSynth's internal block; events take effect at block boundaries


class Renderer:
    def __init__(self, soundfont: str, sr: int = 16000, gain: float = 0.3, polyphony: int = 1024,
                 drum_preset: tuple[int, int] | None = None):
        """``drum_preset``: (bank, program) of this soundfont that the drum channel plays (drum-only
        soundfonts keep their kit at bank 0); program changes on the drum channel are then ignored."""
        import fluidsynth

        self.sr = int(sr)
        self.drum_preset = drum_preset
        self._fs = fluidsynth.Synth(gain=gain, samplerate=float(sr), **{
            "synth.reverb.active": 0, "synth.chorus.active": 0, "synth.polyphony": polyphony,
            "synth.cpu-cores": 1, "synth.midi-channels": 16})
        self._sfid = self._fs.sfload(str(soundfont))
        if self._sfid == -1:
            raise ValueError(f"{soundfont}: FluidSynth cannot load this soundfont")
        lib = fluidsynth._fl
        vp, ci = ctypes.c_void_p, ctypes.c_int
        self._write = lib.fluid_synth_write_float
        self._write.argtypes = [vp, ci, vp, ci, ci, vp, ci, ci]
        self._write.restype = ci
        self._f = {}
        for name, n in (("noteon", 3), ("noteoff", 2), ("cc", 3), ("pitch_bend", 2), ("program_change", 2),
                        ("channel_pressure", 2)):
            fn = getattr(lib, "fluid_synth_" + name)
            fn.argtypes = [vp] + [ci] * n  # synth, channel, ...
            fn.restype = ci
            self._f[name] = fn
        self._select = lib.fluid_synth_program_select
        self._select.argtypes = [vp, ci, ci, ci, ci]
        self._select.restype = ci
        self._reset = lib.fluid_synth_system_reset
        self._reset.argtypes = [vp]
        self._voices = lib.fluid_synth_get_active_voice_count
        self._voices.argtypes = [vp]
        self._voices.restype = ci
        self._scratch = np.zeros(BLOCK, dtype=np.float32)
        self._all_off = lib.fluid_synth_all_sounds_off
        self._all_off.argtypes = [vp, ci]
        self._all_off.restype = ci
        self._synth = self._fs.synth

    def close(self):
        self._fs.delete()

    def flush(self, max_seconds: float = 10.0) -> None:
        """Silence every voice, then reset. Without this, voices of the previous render keep
        sounding into the next one: ``system_reset`` only *releases* them (tails of several seconds
        with long-release sounds). ``all_sounds_off`` stops them within one block; the blocks played
        while they stop are discarded and keep the block alignment."""
        syn = self._synth
        self._all_off(syn, -1)
        buf = self._scratch
        p = buf.ctypes.data
        done = 0
        while self._voices(syn) > 0 and done < max_seconds * self.sr:
            self._write(syn, BLOCK, p, 0, 1, p, 0, 1)
            done += BLOCK
        self._reset(syn)
        while self._voices(syn) > 0 and done < max_seconds * self.sr:
            self._write(syn, BLOCK, p, 0, 1, p, 0, 1)
            done += BLOCK

    def render(self, notes: list[Note], controls: list[Control], t0: float, t1: float,
               preroll: float = 0.0) -> np.ndarray:
        """Render ``notes``/``controls`` over [t0, t1) seconds -> mono float32 of round((t1-t0)*sr).

        Controllers before ``t0 - preroll`` are applied instantly at the start; notes that sound at
        ``t0 - preroll`` start there; the preroll is rendered and then dropped.
        """
        sr = self.sr
        ts = max(0.0, t0 - preroll)
        n_keep = int(round((t1 - t0) * sr))
        skip = int(round((t0 - ts) * sr))
        # Every render writes a whole number of FluidSynth blocks: the synth keeps a partly consumed
        # block between calls, which would otherwise shift the next render by up to 63 samples.
        n = -(-(skip + n_keep) // BLOCK) * BLOCK
        ev = []  # (sample, order, kind, ch, a, b)
        for c in controls:
            if c.time >= t1:
                continue
            s = max(0, int(round((c.time - ts) * sr)))
            ev.append((s, 0, c.kind, c.channel, c.a, c.b))
        for x in notes:
            if x.end <= ts or x.start >= t1:
                continue
            s_on = max(0, int(round((x.start - ts) * sr)))
            s_off = int(round((x.end - ts) * sr))
            ev.append((s_on, 2, "on", x.channel, x.pitch, x.velocity))
            if s_off < n:
                ev.append((max(s_off, s_on), 1, "off", x.channel, x.pitch, 0))
        ev.sort(key=lambda e: (e[0], e[1]))
        left = np.zeros(n, dtype=np.float32)
        right = np.zeros(n, dtype=np.float32)
        syn = self._synth
        self.flush()
        if self.drum_preset is not None:
            self._select(syn, gm.DRUM_CHANNEL, self._sfid, *self.drum_preset)
            ev = [e for e in ev if not (e[2] == "prog" and e[3] == gm.DRUM_CHANNEL)]
        f = self._f
        pos = 0
        lp, rp = left.ctypes.data, right.ctypes.data
        for s, _, kind, ch, a, b in ev:
            if s > pos:
                s = min(s, n)
                self._write(syn, s - pos, lp + 4 * pos, 0, 1, rp + 4 * pos, 0, 1)
                pos = s
            if kind == "on":
                f["noteon"](syn, ch, a, b)
            elif kind == "off":
                f["noteoff"](syn, ch, a)
            elif kind == "cc":
                f["cc"](syn, ch, a, b)
            elif kind == "pb":
                f["pitch_bend"](syn, ch, a)
            elif kind == "prog":
                f["program_change"](syn, ch, a)
            elif kind == "at":
                f["channel_pressure"](syn, ch, a)
        if pos < n:
            self._write(syn, n - pos, lp + 4 * pos, 0, 1, rp + 4 * pos, 0, 1)
        return ((left[skip: skip + n_keep] + right[skip: skip + n_keep]) * 0.5).astype(np.float32)

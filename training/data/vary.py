"""Varied renders: what must not matter to a stem's fit is drawn at random on every render.

One *variant* of a song is fixed by ``(seed, variant, song)``; everything below is drawn from a
generator seeded with that triple, so a render is deterministic and can be resumed anywhere.

* **Key and tempo**, for the whole song together: transposition by -3..+3 semitones (drums are
  not transposed), tempo scaled by 0.85..1.15 (note, controller and beat times divided by it).
  The stems stay compatible with each other; only the absolute key and tempo change. A set with
  ``slow_bpm`` (``train-slow``) instead draws the song's *resulting* tempo, log-uniform in that
  range (the factor is that tempo over the song's own median beat rate, clipped to 0.3..1.5): the
  training corpora are fast (touhou's median beat is about 155 BPM), and slowed to 45-100 BPM
  they carry the many notes per beat of a ballad, so that a beat tracker learns the beat from
  the music rather than from the note rate.
* **Instruments**: every part (channel, program) gets a new General-MIDI program, drawn within
  its family; parts whose role allows it are drawn across families too (a melody may become a
  lead synth, a flute or a guitar; a chord part a piano, an organ, a guitar or a pad). Bass stays
  bass; drums stay drums. Stems are grouped by the family of the *drawn* program.
* **Sound source**: each stem is rendered with a soundfont drawn from the set's pool; drums with a
  drum source drawn from the set's drum pool (General-MIDI soundfonts, the AVL drum soundfonts,
  and the sample kits of Debian's ``hydrogen-drumkits``, played by :class:`SampleDrums`).
* **Room and mix**, applied to each dry stem after synthesis (so that the stems still sum to the
  mix): gain (+-10 dB), low and high shelf EQ, low-pass, light tanh saturation, chorus (modulated
  delay), and a send into one synthetic room per song (exponentially decaying noise, RT60 drawn
  per song).

The soundfonts are the Debian packages named in ``docs`` (``training/data/README.md``):
``TimGM6mb`` is held out of every training pool; it renders the cross-soundfont validation only.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import gm
from .midi import Control, Note, Song, stable_hash

SF2_DIR = Path(os.environ.get("STEMJEPA_SF2_DIR", "/usr/share/sounds/sf2"))
HYDROGEN_DIR = Path(os.environ.get("STEMJEPA_HYDROGEN_DIR", "/usr/share/hydrogen/data/drumkits"))

# General-MIDI soundfonts (every instrument and a drum bank) and drum-only sources
GM_SOUNDFONTS = {
    "fluidr3": "FluidR3_GM.sf2",  # fluid-soundfont-gm
    "gmbank": "sf_GMbank.sf2",  # csound-soundfont
    "opl3": "OPL-3_FM_128M.sf2",  # opl3-soundfont
    "timgm6mb": "TimGM6mb.sf2",  # timgm6mb-soundfont: HELD OUT (cross-soundfont validation)
}
DRUM_SOUNDFONTS = {  # avldrums.lv2-soundfont: one kit preset at bank 0, program 0
    "avl-blackpearl": "Black_Pearl_4_LV2.sf2",
    "avl-redzeppelin": "Red_Zeppelin_4_LV2.sf2",
}
HELD_OUT_SOUNDFONT = "timgm6mb"


@dataclass(frozen=True)
class SetRecipe:
    """What a rendered set draws from. ``melodic``: soundfont names; ``drums``: soundfont names or
    ``hydrogen:<kit>`` / ``hydrogen:*`` (every kit found)."""

    name: str
    melodic: tuple[str, ...]
    drums: tuple[str, ...]
    transpose: int = 3  # semitones, +-
    tempo: float = 0.15  # fraction, +-
    cross_family: float = 0.35  # probability that a part of a role that allows it leaves its family
    draw_programs: bool = True  # False: every part keeps its own program (the corpus's arrangement)
    one_source: float = 0.5  # probability that every melodic stem of a song shares one soundfont
    reverb: tuple[float, float] = (0.0, 0.45)  # send range; 0 = dry
    reverb_prob: float = 0.8
    effects: bool = True
    max_seconds: float = 300.0  # longer songs are cut here (a few medleys run for many minutes)
    slow_bpm: tuple[float, float] | None = None  # draw the resulting tempo (BPM) instead of the factor


TRAIN_RECIPE = SetRecipe("train", melodic=("fluidr3", "gmbank", "opl3"),
                         drums=("fluidr3", "gmbank", "opl3", "avl-blackpearl", "avl-redzeppelin", "hydrogen:*"))
# the training songs slowed to ballad tempi (module docstring); 150 s at most (slowed songs run long)
TRAIN_SLOW_RECIPE = SetRecipe("train-slow", melodic=TRAIN_RECIPE.melodic, drums=TRAIN_RECIPE.drums,
                              slow_bpm=(45.0, 100.0), max_seconds=150.0)
# cross-soundfont validation: the held-out soundfont for everything, always with room sound
HELD_OUT_RECIPE = SetRecipe("xsf", melodic=(HELD_OUT_SOUNDFONT,), drums=(HELD_OUT_SOUNDFONT,),
                            reverb=(0.15, 0.45), reverb_prob=1.0)

# One-factor ablation (what a model relies on): the in-domain validation songs rendered as the
# default render does (FluidR3, each part its own program, own key and tempo, dry, no mix chain),
# then with exactly one factor varied as the training recipe varies it. 60 s per song.
_PLAIN = dict(melodic=("fluidr3",), drums=("fluidr3",), transpose=0, tempo=0.0, draw_programs=False,
              reverb=(0.0, 0.0), reverb_prob=0.0, effects=False, max_seconds=60.0)
ABLATION_RECIPES = {
    "abl-base": SetRecipe("abl-base", **_PLAIN),
    "abl-soundfont": SetRecipe("abl-soundfont", **{**_PLAIN, "melodic": (HELD_OUT_SOUNDFONT,),
                                                   "drums": (HELD_OUT_SOUNDFONT,)}),
    "abl-instruments": SetRecipe("abl-instruments", **{**_PLAIN, "draw_programs": True}),
    "abl-keytempo": SetRecipe("abl-keytempo", **{**_PLAIN, "transpose": 3, "tempo": 0.15}),
    "abl-room": SetRecipe("abl-room", **{**_PLAIN, "reverb": (0.15, 0.45), "reverb_prob": 1.0, "effects": True}),
}


# ---- instruments --------------------------------------------------------------------------------

# programs a part of each role may become when it leaves its family
LEAD_POOL = (40, 41, 56, 57, 64, 65, 66, 68, 71, 72, 73, 74, 75, 79, 80, 81, 82, 84, 85, 26, 27, 29, 30, 22, 110,
             105, 11, 13)
CHORD_POOL = (0, 1, 2, 4, 5, 6, 7, 16, 17, 18, 19, 24, 25, 26, 27, 48, 49, 50, 88, 89, 90, 91, 92, 94, 95, 46, 21)
LEAD_FAMILIES = {"reed", "pipe", "brass", "synth lead", "strings"}
CHORD_FAMILIES = {"piano", "organ", "guitar", "synth pad", "ensemble", "chromatic percussion"}
# families whose programs are mostly unpitched effects: keep their program, never draw into them
KEEP_FAMILIES = {"sound effects", "synth effects", "percussive"}


def draw_program(program: int, rng: np.random.Generator, cross_family: float) -> int:
    fam = gm.family(program)
    if fam in KEEP_FAMILIES:
        return int(program)
    pool = None
    if fam in LEAD_FAMILIES:
        pool = LEAD_POOL
    elif fam in CHORD_FAMILIES:
        pool = CHORD_POOL
    if pool is not None and rng.random() < cross_family:
        return int(pool[rng.integers(len(pool))])
    base = (int(program) // 8) * 8
    return int(base + rng.integers(8))


@dataclass
class Variant:
    """The draws of one render of one song (recorded in track.json)."""

    transpose: int
    tempo: float
    programs: dict[str, int] = field(default_factory=dict)  # "channel:old" -> new program
    sources: dict[str, str] = field(default_factory=dict)  # category -> soundfont / kit name
    mix: dict[str, dict] = field(default_factory=dict)  # category -> effect settings
    room_rt60: float = 0.0

    def to_dict(self) -> dict:
        return {"transpose": self.transpose, "tempo": round(self.tempo, 4), "programs": self.programs,
                "sources": self.sources, "mix": self.mix, "room_rt60": round(self.room_rt60, 3)}


def variant_rng(seed: int, variant: int, key: str, what: str) -> np.random.Generator:
    return np.random.default_rng(stable_hash("vary", what, seed, variant, key))


SLOW_FACTOR_RANGE = (0.3, 1.5)  # the tempo factors a slow recipe may apply


def slow_factor(beats, log_bpm: float) -> float:
    """The tempo factor that puts a song with ``beats`` (s) at ``exp(log_bpm)`` BPM, clipped to
    :data:`SLOW_FACTOR_RANGE`; 1.0 for a song with fewer than 3 beats."""
    b = np.sort(np.asarray(beats, np.float64))
    if len(b) < 3:
        return 1.0
    bpm = 60.0 / float(np.median(np.diff(b)))
    return float(np.clip(math.exp(log_bpm) / bpm, *SLOW_FACTOR_RANGE))


def vary_song(song: Song, recipe: SetRecipe, seed: int, variant: int, key: str) -> tuple[Song, Variant]:
    """A new :class:`Song` with key, tempo and instruments drawn for ``(seed, variant, key)``."""
    rng = variant_rng(seed, variant, key, "song")
    tr = int(rng.integers(-recipe.transpose, recipe.transpose + 1)) if recipe.transpose else 0
    if recipe.slow_bpm is not None:
        tempo = slow_factor(song.beats, rng.uniform(math.log(recipe.slow_bpm[0]), math.log(recipe.slow_bpm[1])))
    elif recipe.tempo:
        tempo = float(np.exp(rng.uniform(math.log(1 - recipe.tempo), math.log(1 + recipe.tempo))))
    else:
        tempo = 1.0
    # one new program per (channel, old program) part, in first-use order
    parts: dict[tuple[int, int], int] = {}
    for n in song.notes:
        if n.channel != gm.DRUM_CHANNEL and (n.channel, n.program) not in parts:
            parts[(n.channel, n.program)] = -1
    for c in song.controls:
        if c.kind == "prog" and c.channel != gm.DRUM_CHANNEL and (c.channel, c.a) not in parts:
            parts[(c.channel, c.a)] = -1
    for k in sorted(parts):
        parts[k] = draw_program(k[1], rng, recipe.cross_family) if recipe.draw_programs else k[1]
    inv = 1.0 / tempo
    notes = []
    for n in song.notes:
        drum = n.channel == gm.DRUM_CHANNEL
        prog = n.program if drum else parts[(n.channel, n.program)]
        pitch = n.pitch if drum else int(np.clip(n.pitch + tr, 0, 127))
        cat = gm.DRUMS if drum else gm.family(prog)
        notes.append(Note(n.start * inv, n.end * inv, n.channel, pitch, n.velocity, prog, cat))
    controls = []
    for c in song.controls:
        a = c.a
        if c.kind == "prog" and c.channel != gm.DRUM_CHANNEL:
            a = parts[(c.channel, c.a)]
        controls.append(Control(c.time * inv, c.channel, c.kind, a, c.b))
    counts: dict[str, dict[int, int]] = {}
    for n in notes:
        counts.setdefault(n.category, {}).setdefault(n.program, 0)
        counts[n.category][n.program] += 1
    labels = {}
    for cat, cnt in counts.items():
        prog = max(sorted(cnt), key=lambda p: cnt[p])
        labels[cat] = song.labels.get(gm.DRUMS, "drum kit") if cat == gm.DRUMS else gm.program_name(prog)
    new = Song(notes, controls, np.asarray(song.beats) * inv, np.asarray(song.downbeats) * inv,
               float(song.end * inv), labels)
    var = Variant(tr, tempo, {f"{ch}:{old}": new_p for (ch, old), new_p in sorted(parts.items())})
    return new, var


def draw_sources(categories: list[str], recipe: SetRecipe, seed: int, variant: int, key: str,
                 drum_names: tuple[str, ...]) -> dict[str, str]:
    """Sound source per category: one shared soundfont (probability ``one_source``) or one each."""
    rng = variant_rng(seed, variant, key, "sources")
    shared = recipe.melodic[rng.integers(len(recipe.melodic))]
    one = rng.random() < recipe.one_source
    out = {}
    for cat in categories:
        if cat == gm.DRUMS:
            out[cat] = drum_names[rng.integers(len(drum_names))]
        else:
            out[cat] = shared if one else recipe.melodic[rng.integers(len(recipe.melodic))]
    return out


# ---- room and mix -------------------------------------------------------------------------------

def _biquad_shelf(f0: float, gain_db: float, sr: int, high: bool) -> tuple[np.ndarray, np.ndarray]:
    """Shelving filter coefficients (the audio-EQ-cookbook form, slope 1)."""
    A = 10 ** (gain_db / 40.0)
    w = 2 * math.pi * f0 / sr
    cw, sw = math.cos(w), math.sin(w)
    alpha = sw / 2 * math.sqrt(2.0)
    s = 1 if high else -1
    b0 = A * ((A + 1) + s * (A - 1) * cw + 2 * math.sqrt(A) * alpha)
    b1 = -2 * s * A * ((A - 1) + s * (A + 1) * cw)
    b2 = A * ((A + 1) + s * (A - 1) * cw - 2 * math.sqrt(A) * alpha)
    a0 = (A + 1) - s * (A - 1) * cw + 2 * math.sqrt(A) * alpha
    a1 = 2 * s * ((A - 1) - s * (A + 1) * cw)
    a2 = (A + 1) - s * (A - 1) * cw - 2 * math.sqrt(A) * alpha
    return np.array([b0, b1, b2]) / a0, np.array([1.0, a1 / a0, a2 / a0])


def room_impulse(rt60: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic room: a few early reflections and a noise tail decaying by 60 dB in ``rt60`` s,
    darker as it decays; unit energy."""
    n = int(min(rt60 * 1.2, 3.0) * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)
    # darker late reflections: one-pole low-pass whose cutoff falls with time, done in 4 blocks
    from scipy.signal import lfilter

    out = np.zeros(n)
    edges = np.linspace(0, n, 5).astype(int)
    for i in range(4):
        a = 0.2 + 0.18 * i
        out[edges[i]:edges[i + 1]] = lfilter([1 - a], [1, -a], tail[edges[i]:edges[i + 1]])
    pre = int(rng.uniform(0.005, 0.03) * sr)
    ir = np.concatenate([np.zeros(pre), out])
    for _ in range(6):  # early reflections
        k = pre + int(rng.uniform(0.002, 0.05) * sr)
        if k < len(ir):
            ir[k] += rng.uniform(-0.6, 0.6)
    return (ir / np.sqrt((ir ** 2).sum() + 1e-12)).astype(np.float32)


def draw_mix(categories: list[str], recipe: SetRecipe, seed: int, variant: int, key: str) -> tuple[dict, float]:
    rng = variant_rng(seed, variant, key, "mix")
    rt60 = float(rng.uniform(0.3, 2.2))
    out = {}
    for cat in categories:
        d: dict = {"gain_db": float(rng.uniform(-10, 10)) if recipe.effects else 0.0}
        if recipe.effects:
            if rng.random() < 0.7:
                d["low_shelf"] = [float(rng.uniform(80, 300)), float(rng.uniform(-6, 6))]
                d["high_shelf"] = [float(rng.uniform(2000, 6000)), float(rng.uniform(-6, 6))]
            if rng.random() < 0.35:
                d["lowpass_hz"] = float(rng.uniform(2500, 7500))
            if rng.random() < 0.3:
                d["drive"] = float(rng.uniform(1.5, 4.0))
            if cat != gm.DRUMS and rng.random() < 0.3:
                d["chorus"] = [float(rng.uniform(0.3, 1.5)), float(rng.uniform(0.2, 0.5))]  # rate Hz, depth
        lo, hi = recipe.reverb
        if rng.random() < recipe.reverb_prob:
            send = float(rng.uniform(lo, hi))
            d["reverb"] = send * (0.6 if cat in (gm.DRUMS, "bass") else 1.0)
        out[cat] = {k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v]) for k, v in d.items()}
    return out, rt60


def apply_mix(x: np.ndarray, d: dict, ir: np.ndarray | None, sr: int) -> np.ndarray:
    """One stem through its drawn chain: EQ -> low-pass -> saturation -> chorus -> room -> gain."""
    from scipy.signal import butter, lfilter, oaconvolve

    y = x.astype(np.float64)
    if "low_shelf" in d:
        b, a = _biquad_shelf(d["low_shelf"][0], d["low_shelf"][1], sr, high=False)
        y = lfilter(b, a, y)
        b, a = _biquad_shelf(d["high_shelf"][0], d["high_shelf"][1], sr, high=True)
        y = lfilter(b, a, y)
    if "lowpass_hz" in d:
        b, a = butter(2, d["lowpass_hz"] / (sr / 2))
        y = lfilter(b, a, y)
    if "drive" in d:
        k = d["drive"]
        peak = float(np.abs(y).max()) or 1.0
        y = np.tanh(k * y / peak) / math.tanh(k) * peak  # same peak, compressed body
    if "chorus" in d:
        rate, depth = d["chorus"]
        t = np.arange(len(y)) / sr
        delay = (0.012 + 0.004 * np.sin(2 * math.pi * rate * t)) * sr  # samples
        pos = np.arange(len(y)) - delay
        i0 = np.floor(pos).astype(np.int64)
        frac = pos - i0
        ok = i0 >= 0
        wet = np.zeros_like(y)
        i0c = np.clip(i0, 0, len(y) - 2)
        wet[ok] = (1 - frac[ok]) * y[i0c[ok]] + frac[ok] * y[i0c[ok] + 1]
        y = (y + depth * wet) / (1 + depth)
    if d.get("reverb", 0) > 0 and ir is not None:
        wet = oaconvolve(y, ir)[: len(y)]
        s = d["reverb"]
        y = (1 - s) * y + s * wet * 1.5
    y *= 10 ** (d.get("gain_db", 0.0) / 20.0)
    return y.astype(np.float32)


# ---- drums from sample kits ----------------------------------------------------------------------

# General-MIDI drum notes -> keywords of a kit instrument's name, best first
GM_DRUM_WORDS = {
    35: ("kick",), 36: ("kick",), 37: ("stick", "rim"), 38: ("snare",), 39: ("clap", "snap"), 40: ("snare",),
    41: ("tom floor", "tom low", "low tom", "floor"), 43: ("tom floor", "tom low", "low tom", "floor"),
    45: ("tom mid", "tom 2", "mid tom"), 47: ("tom mid", "tom 2", "mid tom"), 48: ("tom hi", "tom high", "tom 1"),
    50: ("tom hi", "tom high", "tom 1"), 42: ("closed", "hat", "hh"), 44: ("pedal", "hat", "hh"),
    46: ("open", "hat", "hh"), 49: ("crash",), 57: ("crash",), 51: ("ride",), 59: ("ride",), 53: ("bell", "ride"),
    52: ("china", "crash"), 55: ("splash", "crash"), 54: ("tambourine", "shaker", "maraca"), 56: ("cowbell",),
    69: ("cabasa", "shaker", "maraca"), 70: ("maraca", "shaker"), 75: ("clave", "stick"), 76: ("woodblock hi", "block"),
    77: ("woodblock lo", "block"), 60: ("bongo hi", "bongo"), 61: ("bongo lo", "bongo"), 67: ("agogo high", "agogo"),
    68: ("agogo low", "agogo"),
}
_FALLBACK = {35: 36, 37: 38, 39: 38, 40: 38, 44: 42, 46: 42, 57: 49, 59: 51, 53: 51, 52: 49, 55: 49}


def _tag(e) -> str:
    return e.tag.rsplit("}", 1)[-1]


def _child(e, name):
    return next((c for c in e if _tag(c) == name), None)


class SampleDrums:
    """A Hydrogen drum kit (``drumkit.xml`` + samples) played from General-MIDI drum notes.

    Same interface as :class:`training.data.synth.Renderer`: ``render(notes, controls, t0, t1,
    preroll)`` -> mono float32. Each GM note maps to the kit instrument whose name matches its
    keywords; the velocity picks the sample layer and scales it.
    """

    def __init__(self, kit_dir: str | Path, sr: int = 16000):
        import soundfile as sf
        from scipy.signal import resample_poly

        self.sr = sr
        self.kit_dir = Path(kit_dir)
        root = ET.parse(self.kit_dir / "drumkit.xml").getroot()
        self.name = (_child(root, "name").text or self.kit_dir.name).strip() if _child(root, "name") is not None else self.kit_dir.name
        self.instruments: list[tuple[str, float, list[tuple[float, float, float, np.ndarray]]]] = []
        for inst in root.iter():
            if _tag(inst) != "instrument":
                continue
            name = (_child(inst, "name").text or "").strip().lower() if _child(inst, "name") is not None else ""
            vol = float((_child(inst, "volume").text if _child(inst, "volume") is not None else 1) or 1)
            layers = []
            for lay in inst.iter():
                if _tag(lay) != "layer" or _child(lay, "filename") is None:
                    continue
                path = self.kit_dir / (_child(lay, "filename").text or "").strip()
                if not path.is_file():
                    continue
                try:
                    x, r = sf.read(str(path), dtype="float32", always_2d=True)
                except Exception:
                    continue
                x = x.mean(axis=1)
                if r != sr:
                    g = math.gcd(int(r), sr)
                    x = resample_poly(x, sr // g, int(r) // g).astype(np.float32)
                lo = float(_child(lay, "min").text) if _child(lay, "min") is not None else 0.0
                hi = float(_child(lay, "max").text) if _child(lay, "max") is not None else 1.0
                gain = float(_child(lay, "gain").text) if _child(lay, "gain") is not None else 1.0
                layers.append((lo, hi, gain, x[: sr * 4]))
            if layers and name:
                self.instruments.append((name, vol, layers))
        if not self.instruments:
            raise ValueError(f"{kit_dir}: no playable instrument in drumkit.xml")
        self._map: dict[int, int] = {}
        for note, words in GM_DRUM_WORDS.items():
            for w in words:
                hit = next((i for i, (n, _, _) in enumerate(self.instruments) if w in n), None)
                if hit is not None:
                    self._map[note] = hit
                    break
        for note, alt in _FALLBACK.items():
            if note not in self._map and alt in self._map:
                self._map[note] = self._map[alt]

    @property
    def usable(self) -> bool:
        """A kit good for songs: it has at least a kick, a snare and a hi-hat."""
        return all(k in self._map for k in (36, 38, 42))

    def render(self, notes: list[Note], controls: list[Control], t0: float, t1: float,
               preroll: float = 0.0) -> np.ndarray:
        n = int(round((t1 - t0) * self.sr))
        out = np.zeros(n + self.sr * 4, dtype=np.float32)
        for x in notes:
            if x.start < t0 - 4.0 or x.start >= t1:
                continue
            i = self._map.get(x.pitch)
            if i is None:
                continue
            _, vol, layers = self.instruments[i]
            v = x.velocity / 127.0
            lay = next((l for l in layers if l[0] <= v <= l[1]), layers[-1])
            s = int(round((x.start - t0) * self.sr))
            smp = lay[3]
            a = max(0, -s)
            if a >= len(smp):
                continue
            seg = smp[a:]
            s = max(0, s)
            out[s:s + len(seg)] += seg * (0.5 * vol * lay[2] * (0.25 + 0.75 * v))
        return out[:n]


def hydrogen_kits(root: Path = HYDROGEN_DIR) -> list[str]:
    """Names of the usable kits under ``root`` (sorted; those with a kick, snare and hi-hat)."""
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.glob("*/drumkit.xml")):
        try:
            if SampleDrums(p.parent).usable:
                out.append(p.parent.name)
        except Exception:
            continue
    return out


def expand_drums(recipe: SetRecipe) -> tuple[str, ...]:
    """The recipe's drum pool with ``hydrogen:*`` replaced by every usable kit."""
    out = []
    for d in recipe.drums:
        if d == "hydrogen:*":
            out += [f"hydrogen:{k}" for k in hydrogen_kits()]
        else:
            out.append(d)
    return tuple(out)


class SourceBank:
    """Every sound source of a recipe, loaded once per worker: name -> renderer."""

    def __init__(self, recipe: SetRecipe, sr: int = 16000):
        from .synth import Renderer

        self.recipe = recipe
        self.drum_names = expand_drums(recipe)
        self._r: dict[str, object] = {}
        for name in set(recipe.melodic) | set(self.drum_names):
            if name.startswith("hydrogen:"):
                self._r[name] = SampleDrums(HYDROGEN_DIR / name.split(":", 1)[1], sr)
            elif name in GM_SOUNDFONTS:
                self._r[name] = Renderer(str(SF2_DIR / GM_SOUNDFONTS[name]), sr=sr)
            elif name in DRUM_SOUNDFONTS:
                self._r[name] = Renderer(str(SF2_DIR / DRUM_SOUNDFONTS[name]), sr=sr, drum_preset=(0, 0))
            else:
                raise ValueError(f"unknown sound source {name!r}")

    def __getitem__(self, name: str):
        return self._r[name]


def missing_sources(recipe: SetRecipe) -> list[str]:
    """Files of the recipe's sources that are not installed."""
    miss = []
    for name in set(recipe.melodic) | set(recipe.drums):
        if name == "hydrogen:*":
            if not hydrogen_kits():
                miss.append(str(HYDROGEN_DIR))
        elif name.startswith("hydrogen:"):
            if not (HYDROGEN_DIR / name.split(":", 1)[1] / "drumkit.xml").is_file():
                miss.append(str(HYDROGEN_DIR / name.split(":", 1)[1]))
        else:
            f = GM_SOUNDFONTS.get(name) or DRUM_SOUNDFONTS.get(name)
            if f is None or not (SF2_DIR / f).is_file():
                miss.append(str(SF2_DIR / (f or name)))
    return sorted(miss)

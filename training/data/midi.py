"""Reading a multitrack MIDI file into notes, controller events, a tempo map and beat times.

Every note carries the stem it belongs to: its General-MIDI family (from the program active on its
channel when it starts) or "drums" for channel 10. Corpora whose tracks all use program 0
(POP909, Nottingham) get instruments assigned per track, deterministically per song.
"""
from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import gm


class MidiError(ValueError):
    """A MIDI file that cannot be read or used."""


@dataclass
class Note:
    start: float  # seconds
    end: float
    channel: int
    pitch: int
    velocity: int
    program: int
    category: str  # GM family or "drums"


@dataclass
class Control:
    time: float
    channel: int
    kind: str  # "cc" | "pb" | "prog" | "at"
    a: int
    b: int = 0


@dataclass
class Song:
    notes: list[Note]
    controls: list[Control]
    beats: np.ndarray  # seconds
    downbeats: np.ndarray  # seconds (first beat of each bar)
    end: float  # last note end, seconds
    labels: dict[str, str] = field(default_factory=dict)  # category -> fine label (most used program)
    downbeat_shift: int = 0  # beats the downbeats were moved off the time signatures' bar grid (drum_bar_shift)

    def categories(self) -> list[str]:
        return sorted({n.category for n in self.notes})


def stable_hash(*parts) -> int:
    h = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big")


# Instrument choices for corpora whose tracks carry no program (all program 0).
ROLE_PROGRAMS = {
    # POP909 MELODY: flute, violin, trumpet, alto sax, tenor sax, oboe, clarinet, square/saw lead, ocarina
    "melody": (73, 40, 56, 65, 66, 68, 71, 80, 81, 79),
    # POP909 BRIDGE: string ensembles, clarinet, nylon/steel guitar, warm pad, french horn, cello, vibraphone
    "bridge": (48, 49, 71, 24, 25, 89, 60, 42, 11, 52),
    # POP909 PIANO: grand, bright, electric pianos, nylon/clean guitar, drawbar organ
    "piano": (0, 1, 4, 5, 24, 27, 16, 0, 4),
    # Nottingham melody (folk): violin, fiddle, flute, recorder, whistle, accordion, harmonica, oboe, clarinet
    "folk_melody": (40, 110, 73, 74, 78, 21, 22, 68, 71),
    # Nottingham chords: grand piano, nylon/steel guitar, accordion, strings, harpsichord, church/reed organ
    "folk_chords": (0, 24, 25, 21, 48, 6, 19, 20, 46),
    # bass lines made for the demo: fingered, picked, fretless, acoustic, synth bass
    "bass": (33, 34, 35, 32, 38),
}


def assign_programs(roles: list[str], key: str) -> list[int]:
    """One program per role, deterministic in ``key``, in distinct GM families where possible."""
    rng = np.random.default_rng(stable_hash("assign", key))
    used: set[str] = set()
    out = []
    for role in roles:
        choices = list(ROLE_PROGRAMS[role])
        rng.shuffle(choices)
        pick = next((p for p in choices if gm.family(p) not in used), choices[0])
        used.add(gm.family(pick))
        out.append(int(pick))
    return out


class TempoMap:
    """Ticks <-> seconds from set_tempo events (default 120 BPM)."""

    def __init__(self, tempos: list[tuple[int, int]], tpb: int):
        tempos = sorted(tempos)
        ticks, usec = [0], [500000]
        for t, u in tempos:
            if t == ticks[-1]:
                usec[-1] = u
            else:
                ticks.append(t)
                usec.append(u)
        self.tpb = tpb
        self.ticks = np.asarray(ticks, dtype=np.float64)
        self.usec = np.asarray(usec, dtype=np.float64)
        secs = [0.0]
        for i in range(1, len(ticks)):
            secs.append(secs[-1] + (ticks[i] - ticks[i - 1]) * usec[i - 1] / 1e6 / tpb)
        self.secs = np.asarray(secs)

    def seconds(self, tick):
        tick = np.asarray(tick, dtype=np.float64)
        i = np.searchsorted(self.ticks, tick, side="right") - 1
        i = np.clip(i, 0, len(self.ticks) - 1)
        return self.secs[i] + (tick - self.ticks[i]) * self.usec[i] / 1e6 / self.tpb


def beat_grid(timesigs: list[tuple[int, int, int]], tpb: int, end_tick: float):
    """Beat and downbeat ticks from time signatures (tick, numerator, denominator).

    The beat is one 1/denominator note, except compound metres (6/8, 9/8, 12/8, ...) whose beat is a
    dotted quarter. A time-signature change starts a new bar.
    """
    sigs: dict[int, tuple[int, int]] = {0: (4, 4)}
    for t, n, d in sorted(timesigs, key=lambda x: x[0]):
        sigs[int(t)] = (max(1, int(n)), max(1, int(d)))  # last one at a tick wins
    starts = sorted(sigs)
    beats, downs = [], []
    for k, t0 in enumerate(starts):
        t1 = starts[k + 1] if k + 1 < len(starts) else end_tick
        n, d = sigs[t0]
        unit = tpb * 4.0 / d
        per_bar = n
        if d >= 8 and n % 3 == 0 and n > 3:
            unit *= 3
            per_bar = n // 3
        i = 0
        t = float(t0)
        while t < t1 - 1e-9 and t <= end_tick:
            beats.append(t)
            if i % per_bar == 0:
                downs.append(t)
            i += 1
            t = t0 + i * unit
    return np.asarray(beats), np.asarray(downs)


#: GM drum keys a drummer marks a bar's first beat with: crash cymbals 1 and 2, Chinese cymbal, splash
BAR_CYMBALS = (49, 52, 55, 57)


def bar_positions(n_beats: int, down_idx: np.ndarray) -> np.ndarray:
    """(n_beats,) each beat's position in its bar (0: a downbeat), from the downbeats' beat indices;
    beats before the first downbeat count back from it in bars of the first bar's length."""
    pos = np.zeros(n_beats, np.int64)
    if not len(down_idx):
        return pos
    d = np.asarray(down_idx, np.int64)
    last = np.searchsorted(d, np.arange(n_beats), side="right") - 1
    first_len = int(d[1] - d[0]) if len(d) > 1 else 4
    before = last < 0
    pos[~before] = np.arange(n_beats)[~before] - d[last[~before]]
    pos[before] = (np.arange(n_beats)[before] - d[0]) % max(1, first_len)
    return pos


def drum_bar_shift(notes: list[Note], beats: np.ndarray, downbeats: np.ndarray, min_hits: int = 8,
                   share: float = 0.5) -> int:
    """Beats by which the drummer's bars start after the time signatures' bar grid, or 0.

    Many MIDI files start with a pickup or a count-in that is not a bar of its own, so the bar grid
    the time signatures give is one or more beats off the music (in a sample of 98 Touhou songs with
    crash cymbals, the crashes fell mostly on the grid's first beat in 55, and on one other beat of
    the bar in most of the rest). A drummer marks the first beat of a bar with a crash: when at least
    ``min_hits`` crashes (:data:`BAR_CYMBALS`, within 40 ms of a beat) fall on the beats, at least
    ``share`` of them on one bar position p > 0 and at least twice as many there as on the grid's
    first beat, the bars start p beats later. ``beats``, ``downbeats``: seconds (a downbeat is one of
    the beats)."""
    b = np.asarray(beats, np.float64)
    d = np.asarray(downbeats, np.float64)
    if len(b) < 2 or len(d) < 2:
        return 0
    hits = np.array([n.start for n in notes if n.category == gm.DRUMS and n.pitch in BAR_CYMBALS], np.float64)
    if len(hits) < min_hits:
        return 0
    i = np.clip(np.searchsorted(b, hits), 1, len(b) - 1)
    i = np.where(np.abs(b[i - 1] - hits) <= np.abs(b[i] - hits), i - 1, i)
    on = np.abs(b[i] - hits) <= 0.04
    if on.sum() < min_hits:
        return 0
    pos = bar_positions(len(b), np.searchsorted(b, d - 1e-6))[i[on]]
    count = np.bincount(pos)
    p = int(np.argmax(count))
    if p > 0 and count[p] >= share * on.sum() and count[p] >= 2 * count[0]:
        return p
    return 0


def shift_downbeats(beats: np.ndarray, downbeats: np.ndarray, shift: int) -> np.ndarray:
    """The downbeats moved ``shift`` beats later along ``beats`` (seconds), with the bar that the move
    opens at the start filled in (one bar before the first, where there is a beat for it)."""
    b = np.asarray(beats, np.float64)
    d = np.asarray(downbeats, np.float64)
    if not shift or not len(d) or not len(b):
        return d.copy()
    idx = np.searchsorted(b, d - 1e-6) + int(shift)
    first_len = int(idx[1] - idx[0]) if len(idx) > 1 else 4
    if idx[0] - first_len >= 0:
        idx = np.r_[idx[0] - first_len, idx]
    return b[idx[idx < len(b)]]


def read_song(path: str | Path, assign: str | None = None, key: str | None = None) -> Song:
    """Parse ``path``. ``assign`` = "pop909" | "nottingham" assigns instruments per track.

    Raises :class:`MidiError` for unreadable files or files without notes.
    """
    import mido

    path = Path(path)
    try:
        mid = mido.MidiFile(str(path), clip=True)
    except Exception as e:  # mido raises OSError, EOFError, ValueError, KeyError ... on bad files
        raise MidiError(f"{path}: cannot read MIDI ({type(e).__name__}: {e})") from e
    if mid.type == 2:
        raise MidiError(f"{path}: MIDI type 2 (sequential tracks) is not supported")
    tpb = mid.ticks_per_beat or 480
    raw = []
    tempos, sigs = [], []
    for ti, tr in enumerate(mid.tracks):
        tick = 0
        for k, msg in enumerate(tr):
            tick += msg.time
            if msg.is_meta:
                if msg.type == "set_tempo":
                    tempos.append((tick, msg.tempo))
                elif msg.type == "time_signature":
                    sigs.append((tick, msg.numerator, msg.denominator))
                continue
            if msg.type in ("note_on", "note_off", "control_change", "pitchwheel", "program_change", "aftertouch"):
                raw.append((tick, ti, k, msg))
    raw.sort(key=lambda e: (e[0], e[1], e[2]))
    tmap = TempoMap(tempos, tpb)

    # channel remapping and programs for corpora without instruments
    chan_of_track = None
    fixed_prog: dict[int, int] = {}
    if assign:
        note_tracks = []
        for tick, ti, k, msg in raw:
            if msg.type == "note_on" and msg.velocity > 0 and ti not in note_tracks:
                note_tracks.append(ti)
        note_tracks.sort()
        if assign == "pop909":
            names = {}
            for ti, tr in enumerate(mid.tracks):
                for msg in tr:
                    if msg.type == "track_name":
                        names[ti] = msg.name.strip().upper()
                        break
            rolemap = {"MELODY": "melody", "BRIDGE": "bridge", "PIANO": "piano"}
            roles = [rolemap.get(names.get(ti, ""), "piano") for ti in note_tracks]
        else:  # nottingham: first track melody, the others chords
            roles = ["folk_melody"] + ["folk_chords"] * (len(note_tracks) - 1)
        progs = assign_programs(roles, key or path.name)
        free = [c for c in range(16) if c != gm.DRUM_CHANNEL]
        chan_of_track = {ti: free[i % len(free)] for i, ti in enumerate(note_tracks)}
        fixed_prog = {chan_of_track[ti]: p for ti, p in zip(note_tracks, progs)}

    ticks = np.asarray([e[0] for e in raw], dtype=np.float64)
    secs = tmap.seconds(ticks) if len(raw) else np.zeros(0)
    program = [0] * 16
    for c, p in fixed_prog.items():
        program[c] = p
    open_notes: dict[tuple[int, int], deque] = defaultdict(deque)
    notes: list[Note] = []
    controls: list[Control] = [Control(0.0, c, "prog", p) for c, p in sorted(fixed_prog.items())]
    for (tick, ti, k, msg), t in zip(raw, secs):
        t = float(t)
        ch = chan_of_track.get(ti, msg.channel) if chan_of_track is not None else msg.channel
        if msg.type == "note_on" and msg.velocity > 0:
            open_notes[(ch, msg.note)].append((t, msg.velocity, program[ch]))
        elif msg.type in ("note_on", "note_off"):
            q = open_notes.get((ch, msg.note))
            if q:
                t0, vel, prog = q.popleft()
                notes.append(_note(t0, t, ch, msg.note, vel, prog))
        elif msg.type == "program_change":
            if not assign:
                program[ch] = msg.program
                controls.append(Control(t, ch, "prog", msg.program))
        elif msg.type == "control_change":
            if msg.control in (0, 32):  # bank select: GM soundfont, keep GM banks
                continue
            controls.append(Control(t, ch, "cc", msg.control, msg.value))
        elif msg.type == "pitchwheel":
            controls.append(Control(t, ch, "pb", msg.pitch + 8192))
        elif msg.type == "aftertouch":
            controls.append(Control(t, ch, "at", msg.value))
    last = float(secs[-1]) if len(raw) else 0.0
    for (ch, pitch), q in open_notes.items():
        for t0, vel, prog in q:
            notes.append(_note(t0, max(last, t0 + 0.5), ch, pitch, vel, prog))
    if not notes:
        raise MidiError(f"{path}: no notes")
    notes.sort(key=lambda n: (n.start, n.channel, n.pitch))
    end = max(n.end for n in notes)
    # beats from the tempo map and time signatures
    end_tick = _tick_at(tmap, end)
    bt, dt = beat_grid(sigs, tpb, end_tick)
    beats = tmap.seconds(bt) if len(bt) else np.zeros(0)
    downbeats = tmap.seconds(dt) if len(dt) else np.zeros(0)
    # the drummer's bars where the crashes say the time signatures' grid is off (drum_bar_shift)
    shift = drum_bar_shift(notes, beats, downbeats)
    if shift:
        downbeats = shift_downbeats(beats, downbeats, shift)
    # fine label per category: most used program by note count
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for n in notes:
        counts[n.category][n.program] += 1
    labels = {}
    for cat, c in counts.items():
        prog = max(sorted(c), key=lambda p: c[p])
        labels[cat] = gm.drum_label(prog) if cat == gm.DRUMS else gm.program_name(prog)
    return Song(notes, controls, np.asarray(beats), np.asarray(downbeats), float(end), labels, shift)


def _note(t0, t1, ch, pitch, vel, prog) -> Note:
    cat = gm.DRUMS if ch == gm.DRUM_CHANNEL else gm.family(prog)
    return Note(t0, max(t1, t0), ch, pitch, vel, prog, cat)


def _tick_at(tmap: TempoMap, sec: float) -> float:
    i = int(np.searchsorted(tmap.secs, sec, side="right") - 1)
    i = max(0, min(i, len(tmap.secs) - 1))
    return float(tmap.ticks[i] + (sec - tmap.secs[i]) * 1e6 * tmap.tpb / tmap.usec[i])


def read_pop909_beats(folder: str | Path):
    """(beats, downbeats) in seconds from POP909's beat_midi.txt, or None when absent."""
    p = Path(folder) / "beat_midi.txt"
    if not p.exists():
        return None
    rows = np.loadtxt(p, ndmin=2)
    beats = rows[:, 0]
    downs = beats[rows[:, 2] > 0.5] if rows.shape[1] > 2 else beats[:0]
    return beats, downs


# ---- corpus conventions -------------------------------------------------------------------------

_NUM_PREFIX = re.compile(r"^\s*\d+(\.\d+)?\s*(\.|-|_|\))?\s*")
_ARRANGER = re.compile(r"\s*\([^()]*\)\s*$")


def touhou_title(filename: str) -> str:
    """Title key of a Touhou arrangement: "6. The Hundredth Black Market (KR.Palto47 - XG).mid"
    -> "thehundredthblackmarket". Numbering and the arranger in parentheses are dropped, and only
    the part before " ~ " (Touhou titles' subtitle separator) is kept."""
    s = Path(filename).stem
    s = _ARRANGER.sub("", s)
    s = _NUM_PREFIX.sub("", s)
    s = s.split("~")[0]
    key = re.sub(r"[^0-9a-z]+", "", s.lower())
    return key or re.sub(r"[^0-9a-z]+", "", Path(filename).stem.lower())


def group_of(corpus: str, path: Path) -> str:
    if corpus == "touhou":
        return "touhou:" + touhou_title(path.name)
    if corpus == "pop909":
        return "pop909:" + path.stem.split("-")[0].split("_")[0]
    if corpus == "nottingham":
        return "nottingham:" + path.stem.lower()
    return f"{corpus}:" + path.stem.lower()

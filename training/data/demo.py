"""Demo stem library from redistributable material only: POP909 (MIT) and Groove MIDI (CC BY 4.0).

Each demo song is a ~30-s excerpt of a POP909 song with five stems: its MELODY, BRIDGE and PIANO
tracks (instruments assigned per song as in the training render), a bass line generated from
POP909's ``chord_midi.txt`` roots on the beats of ``beat_midi.txt``, and drums from a Groove MIDI
performance (4/4 "beat" takes) retimed onto the song's beats. Beats in track.json come from
``beat_midi.txt``, shifted to the excerpt. Stems are 16 kHz mono 16-bit FLAC (the layout loader
accepts any of ``engine.audio.AUDIO_EXTENSIONS``); the mix of one song is saved as the demo track.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from . import gm
from .midi import Control, Note, assign_programs, read_pop909_beats, read_song, stable_hash
from .render import SR, render_song, write_track

PITCH_CLASS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# Groove MIDI (Roland TD-11) pitches outside the General-MIDI drum map -> nearest GM sound
GROOVE_TO_GM = {22: 42, 26: 46, 58: 43, 27: 49, 28: 49, 29: 57, 30: 52, 31: 49, 32: 51, 34: 53, 39: 38, 41: 45}
GROOVE_STYLES = ("pop", "rock", "funk", "soul", "hiphop", "dance/disco", "rock", "funk")


def chord_root(label: str) -> int | None:
    """Pitch class of a POP909 chord label ("F#:maj7/5" -> 6; "N" -> None)."""
    m = re.match(r"^([A-G])([#b]*)", label.strip())
    if not m:
        return None
    pc = PITCH_CLASS[m.group(1)] + m.group(2).count("#") - m.group(2).count("b")
    return pc % 12


def read_chords(folder: Path) -> list[tuple[float, float, int | None]]:
    rows = []
    for line in (folder / "chord_midi.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            rows.append((float(parts[0]), float(parts[1]), chord_root(parts[2])))
    return rows


def bass_line(chords, beats: np.ndarray, downbeats: np.ndarray, program: int, channel: int = 3) -> list[Note]:
    """One note per beat on the chord root (E1..D#2), a fifth on the third beat of a 4-beat bar."""
    notes = []
    dset = set(np.round(downbeats, 3))
    bar_pos = 0
    for i, b in enumerate(beats[:-1]):
        if round(float(b), 3) in dset:
            bar_pos = 0
        nxt = float(beats[i + 1])
        root = next((r for s, e, r in chords if s - 1e-3 <= b < e - 1e-3), None)
        if root is not None:
            pitch = 28 + (root - 4) % 12  # E1 (28) .. D#2 (39)
            if bar_pos == 2:
                pitch += 7
            vel = 100 if bar_pos == 0 else 84
            notes.append(Note(float(b), float(b) + 0.85 * (nxt - float(b)), channel, pitch, vel, program,
                              gm.family(program)))
        bar_pos += 1
    return notes


def groove_takes(groove_root: Path) -> list[dict]:
    with open(groove_root / "info.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r["beat_type"] == "beat" and r["time_signature"] == "4-4"
            and float(r["duration"]) >= 20.0]


def groove_drums(groove_root: Path, take: dict, beats: np.ndarray, downbeats: np.ndarray) -> list[Note]:
    """The take's drum notes retimed onto ``beats``: its beat k (from its BPM) lands on song beat
    (first downbeat + k); the take loops (whole bars) until the song's beats run out."""
    song = read_song(groove_root / take["midi_filename"])
    bpm = float(take["bpm"])
    drum = [n for n in song.notes if n.category == gm.DRUMS]
    first = min(n.start for n in drum)
    t_first = np.floor(first * bpm / 60.0 + 0.25)  # the bar the performance starts in (tolerate early hits)
    pos = [(n.start * bpm / 60.0 - t_first, n) for n in drum]
    take_beats = max(p for p, _ in pos)
    loop = max(4.0, np.floor(take_beats / 4.0) * 4.0)  # whole bars
    start_idx = int(np.searchsorted(beats, downbeats[0] - 1e-6)) if len(downbeats) else 0
    idx = np.arange(len(beats), dtype=np.float64)
    out = []
    rep = 0
    while True:
        placed = False
        for p, n in pos:
            if p >= loop:
                continue
            k = start_idx + rep * loop + p
            if k < 0 or k > len(beats) - 1:
                continue
            t = float(np.interp(k, idx, beats))
            dur = max(0.05, (n.end - n.start))
            pitch = GROOVE_TO_GM.get(n.pitch, n.pitch)
            out.append(Note(t, t + dur, gm.DRUM_CHANNEL, pitch, n.velocity, 0, gm.DRUMS))
            placed = True
        rep += 1
        if not placed or start_idx + rep * loop > len(beats):
            break
    out.sort(key=lambda n: n.start)
    return out


def pick_songs(pop_root: Path, n: int, seed: int = 7) -> list[Path]:
    """Songs with steady 4-beat bars and a tempo of 70-130 BPM, chosen by a seeded shuffle."""
    dirs = sorted(p for p in pop_root.iterdir() if p.is_dir() and (p / "beat_midi.txt").exists())
    order = np.random.default_rng(seed).permutation(len(dirs))
    out = []
    for i in order:
        d = dirs[i]
        b = read_pop909_beats(d)
        if b is None or len(b[1]) < 16:
            continue
        beats, downs = b
        bpm = 60.0 / np.median(np.diff(beats))
        spacing = np.diff(np.searchsorted(beats, downs))
        if 70 <= bpm <= 130 and len(spacing) and np.mean(spacing == 4) > 0.95 and (d / "chord_midi.txt").exists():
            out.append(d)
        if len(out) == n:
            break
    return out


def build_demo(out_dir="engine/assets/demo/library", midi_root="/work/shared/data/midi",
               soundfont="/usr/share/sounds/sf2/FluidR3_GM.sf2", songs: int = 6, seconds: float = 30.0,
               demo_track: str | None = "engine/assets/demo/demo_track.flac", seed: int = 7) -> dict:
    from .synth import Renderer

    midi_root, out_dir = Path(midi_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    takes = groove_takes(midi_root / "groove")
    renderer = Renderer(soundfont, sr=SR)
    made = []
    first_mix = None
    for k, d in enumerate(pick_songs(midi_root / "pop909", songs, seed)):
        sid = d.name
        key = f"demo:{sid}"
        song = read_song(d / f"{sid}.mid", assign="pop909", key=key)
        song.beats, song.downbeats = read_pop909_beats(d)
        bass_prog = assign_programs(["bass"], key)[0]
        song.notes += bass_line(read_chords(d), song.beats, song.downbeats, bass_prog)
        song.controls.append(Control(0.0, 3, "prog", bass_prog))
        style = GROOVE_STYLES[k % len(GROOVE_STYLES)]
        cands = [t for t in takes if t["style"].split("/")[0] == style.split("/")[0]] or takes
        take = cands[stable_hash(key, "groove") % len(cands)]
        song.notes += groove_drums(midi_root / "groove", take, song.beats, song.downbeats)
        song.notes.sort(key=lambda n: n.start)
        song.end = max(n.end for n in song.notes)
        labels = {"drums": "drum kit", "bass": gm.program_name(bass_prog)}
        for n in song.notes:  # POP909 tracks: one program per category
            if n.category not in labels:
                labels[n.category] = gm.program_name(n.program)
        song.labels = labels
        r = render_song(song, renderer, excerpt=seconds, seed=seed, key=key)
        # stem ids by role for the demo: melody, bridge, piano, bass, drums
        roles = {}
        chan_role = {0: "melody", 1: "bridge", 2: "piano", 3: "bass", gm.DRUM_CHANNEL: "drums"}
        for n in song.notes:
            roles.setdefault(n.category, chan_role.get(n.channel, gm.stem_id(n.category)))
        stems = {roles[c]: x for c, x in r["stems"].items()}
        lab = {roles[c]: labels[c] for c in r["stems"]}
        tid = f"pop909-{sid}"
        meta = {"beats": [round(float(b), 4) for b in r["beats"]],
                "downbeats": [round(float(b), 4) for b in r["downbeats"]],
                "source": f"POP909 song {sid}; drums: Groove MIDI {take['midi_filename']}",
                "license": "POP909: MIT; Groove MIDI Dataset: CC BY 4.0 (see ../ATTRIBUTION.md)",
                "excerpt": [round(r["start"], 3), round(r["end"], 3)], "sample_rate": SR}
        # role-named stems (melody, bridge, ...) with their category kept in track.json
        write_track(out_dir, tid, stems, meta, lab, ext=".flac", categories={roles[c]: c for c in r["stems"]})
        if first_mix is None:
            first_mix = sum(stems.values())
            first_truth = {"track_id": tid, "beats": meta["beats"],
                           "note": "the demo track is the mix of this library track's stems; beats from POP909 beat_midi.txt"}
        made.append({"track_id": tid, "stems": sorted(stems), "labels": lab, "groove": take["midi_filename"]})
    renderer.close()
    if demo_track and first_mix is not None:
        import soundfile as sf

        Path(demo_track).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(demo_track), np.clip(first_mix, -1, 1), SR, subtype="PCM_16")
        # ground truth for replay tests: which library track the demo is, and its beats
        Path(demo_track).with_suffix(".json").write_text(json.dumps(first_truth, indent=1))
    (out_dir / "splits.json").write_text(json.dumps({"all": [m["track_id"] for m in made]}, indent=1))
    return {"songs": made, "demo_track": demo_track}

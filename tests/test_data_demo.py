"""The shipped demo library (engine/assets/demo) and the demo builder's pieces."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.data import gm
from training.data.demo import bass_line, chord_root, groove_drums
from training.data.layout import load_dataset

DEMO = Path(__file__).resolve().parents[1] / "engine" / "assets" / "demo"


def test_demo_library_is_valid_and_small():
    tracks = load_dataset(DEMO / "library")
    assert len(tracks) >= 5
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total < 13 * 2**20
    for t in tracks:
        assert sorted(t.stems) == ["bass", "bridge", "drums", "melody", "piano"]
        assert t.stems["drums"].category == "drums" and t.stems["bass"].category == "bass"
        assert t.beats and 0 <= t.beats[0] < 1.0 and np.all(np.diff(t.beats) > 0.3)
        info = sf.info(str(t.stems["bass"].path))
        assert info.samplerate == 16000 and info.channels == 1 and 25 < info.duration <= 30.01
    assert len({t.stems["melody"].label for t in tracks}) >= 3  # instruments vary between songs
    assert "MIT" in (DEMO / "ATTRIBUTION.md").read_text() and "CC BY 4.0" in (DEMO / "ATTRIBUTION.md").read_text()
    mix_info = sf.info(str(DEMO / "demo_track.flac"))
    assert mix_info.samplerate == 16000 and mix_info.duration > 25


def test_demo_drums_fall_on_beats():
    t = load_dataset(DEMO / "library")[0]
    x = t.stems["drums"].load()
    env = np.abs(x[: len(x) // 160 * 160]).reshape(-1, 160).max(axis=1)  # 10-ms peaks
    idx = np.asarray([int(b * 100) for b in t.beats if b * 100 < len(env) - 1])
    assert env[idx].mean() > 1.4 * env.mean()


def test_chord_roots_and_bass_line():
    assert chord_root("F#:maj7/5") == 6 and chord_root("Bb:min") == 10 and chord_root("N") is None
    beats = np.arange(0, 8.5, 0.5)
    downs = beats[::4]
    chords = [(0.0, 2.0, 0), (2.0, 4.0, 7), (4.0, 8.5, None)]
    notes = bass_line(chords, beats, downs, program=33)
    assert [n.start for n in notes] == list(beats[:8])  # no notes during "N"
    assert notes[0].pitch % 12 == 0 and notes[4].pitch % 12 == 7
    assert notes[2].pitch == notes[0].pitch + 7  # fifth on beat 3
    assert all(28 <= n.pitch <= 46 and n.category == "bass" for n in notes)


def test_groove_retiming(tmp_path):
    mido = pytest.importorskip("mido")
    # a 100-BPM take: kick on every beat for 2 bars -> retimed onto irregular song beats
    mid = mido.MidiFile(type=0, ticks_per_beat=480)
    tr = mido.MidiTrack()
    tr.append(mido.MetaMessage("set_tempo", tempo=600000, time=0))
    for i in range(8):
        tr.append(mido.Message("note_on", channel=9, note=36, velocity=100, time=0 if i == 0 else 400))
        tr.append(mido.Message("note_off", channel=9, note=36, velocity=0, time=80))
    mid.tracks.append(tr)
    mid.save(str(tmp_path / "take.mid"))
    beats = np.cumsum(np.r_[1.0, np.full(15, 0.55)])  # song beats start at 1.0 s
    notes = groove_drums(tmp_path, {"midi_filename": "take.mid", "bpm": "100"}, beats, beats[::4])
    starts = np.asarray([n.start for n in notes])
    assert np.allclose(starts, beats[: len(starts)], atol=1e-6) and len(starts) >= 8  # looped by bars
    assert all(n.channel == gm.DRUM_CHANNEL and n.category == "drums" for n in notes)

"""Downbeats on the drummer's bars: ``drum_bar_shift`` moves a MIDI file's bar grid where its crash
cymbals say the time signatures are off (a pickup that is not a bar of its own), and
``rephase-downbeats`` brings an older render up to it."""
import json

import numpy as np
import pytest

mido = pytest.importorskip("mido")
from training.data.midi import Note, bar_positions, drum_bar_shift, read_song, shift_downbeats  # noqa: E402

TPB = 480


def pickup_song(path, crash_beats, bars=8, crash=49):
    """120 BPM 4/4 (0.5 s a beat): a piano note on every beat, a kick on every beat, and a crash
    (GM key ``crash``) on each beat index of ``crash_beats``."""
    mid = mido.MidiFile(type=1, ticks_per_beat=TPB)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    meta.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    mid.tracks.append(meta)
    n = bars * 4
    for ch, notes in ((0, [(i, 60) for i in range(n)]), (9, [(i, 36) for i in range(n)] + [(i, crash) for i in crash_beats])):
        tr = mido.MidiTrack()
        if ch == 0:
            tr.append(mido.Message("program_change", channel=0, program=0, time=0))
        ev = []
        for b, p in notes:
            ev += [(b * TPB, mido.Message("note_on", channel=ch, note=p, velocity=90)),
                   (b * TPB + TPB // 2, mido.Message("note_off", channel=ch, note=p, velocity=0))]
        ev.sort(key=lambda e: (e[0], e[1].type == "note_on"))
        t = 0
        for tick, m in ev:
            tr.append(m.copy(time=tick - t))
            t = tick
        mid.tracks.append(tr)
    mid.save(str(path))
    return path


def test_crashes_after_the_grid_move_the_bars(tmp_path):
    # a one-beat pickup: the drummer crashes on beat 1, 5, 9, ... of the file's grid
    song = read_song(pickup_song(tmp_path / "p.mid", range(1, 32, 4)))
    assert song.downbeat_shift == 1
    assert np.allclose(song.downbeats[:3], [0.5, 2.5, 4.5], atol=1e-4)
    assert np.allclose(np.diff(song.beats), 0.5, atol=1e-4)  # the beats stay where they were
    # crashes on the grid's own first beats, too few crashes, a crash every half bar, or none:
    # the time signatures' grid stands
    for crashes in (range(0, 32, 4), range(1, 20, 4), range(0, 32, 2), ()):
        s = read_song(pickup_song(tmp_path / "q.mid", crashes))
        assert s.downbeat_shift == 0 and np.allclose(s.downbeats[:3], [0.0, 2.0, 4.0], atol=1e-4), crashes
    # a splash marks the bar as a crash does; a ride cymbal (51) does not
    assert read_song(pickup_song(tmp_path / "s.mid", range(2, 32, 4), crash=55)).downbeat_shift == 2
    assert read_song(pickup_song(tmp_path / "r.mid", range(2, 32, 4), crash=51)).downbeat_shift == 0


def test_bar_positions_and_shift_across_a_meter_change():
    beats = np.arange(20.0)
    downs = np.array([0.0, 4.0, 8.0, 11.0, 14.0, 17.0])  # 4/4 twice, then 3/4
    pos = bar_positions(20, np.searchsorted(beats, downs))
    assert pos[:12].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 0] and pos[-1] == 2
    assert shift_downbeats(beats, downs, 2).tolist() == [2.0, 6.0, 10.0, 13.0, 16.0, 19.0]
    # the move opens a bar at the start: it is filled in where a beat is there for it
    assert shift_downbeats(beats, np.array([2.0, 6.0, 10.0]), 3).tolist() == [1.0, 5.0, 9.0, 13.0]
    assert shift_downbeats(beats, downs, 0).tolist() == downs.tolist()
    b = np.arange(0.0, 20.0, 0.5)
    crash = [Note(float(t), float(t) + 0.2, 9, 49, 90, 0, "drums") for t in b[3::4]]  # 10 crashes
    assert drum_bar_shift(crash, b, b[::4]) == 3 and drum_bar_shift(crash[:3], b, b[::4]) == 0


def test_rephase_downbeats_brings_an_old_render_up_to_date(tmp_path):
    from training.data.render import rephase_downbeats

    midi_root = tmp_path / "midi"
    (midi_root / "touhou").mkdir(parents=True)
    pickup_song(midi_root / "touhou" / "a.mid", range(1, 32, 4))
    data = tmp_path / "data"
    # a slowed render (0.8 s a beat) of a.mid, written before the shift existed; a POP909 track
    # (annotated downbeats: never moved); a track whose source is gone
    beats = [round(0.8 * i, 4) for i in range(30)]
    tracks = {"a-v1": {"source": "touhou/a.mid", "corpus": "touhou", "beats": beats, "downbeats": beats[::4]},
              "p": {"source": "pop909/001/001.mid", "corpus": "pop909", "beats": beats, "downbeats": beats[1::4]},
              "gone": {"source": "touhou/gone.mid", "corpus": "touhou", "beats": beats, "downbeats": beats[::4]}}
    for tid, meta in tracks.items():
        (data / tid).mkdir(parents=True)
        (data / tid / "track.json").write_text(json.dumps({"stems": {}, **meta}))
    got = rephase_downbeats(data, midi_root, progress=False)
    assert got == {"tracks": 3, "shifted": 1, "unchanged": 1, "already": 0, "failed": 1}
    a = json.loads((data / "a-v1" / "track.json").read_text())
    assert a["downbeat_shift"] == 1 and a["downbeats_grid"] == beats[::4]
    assert a["downbeats"] == beats[1::4] and a["beats"] == beats
    p = json.loads((data / "p" / "track.json").read_text())
    assert p["downbeat_shift"] == 0 and p["downbeats"] == beats[1::4] and "downbeats_grid" not in p
    assert "downbeat_shift" not in json.loads((data / "gone" / "track.json").read_text())
    before = (data / "a-v1" / "track.json").read_text()
    again = rephase_downbeats(data, midi_root, progress=False)
    assert again["already"] == 2 and again["failed"] == 1 and (data / "a-v1" / "track.json").read_text() == before

"""Rendering MIDI into stems: sum of stems == full render, labels, beats, excerpts, splits, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest

mido = pytest.importorskip("mido")
pytest.importorskip("fluidsynth")

from training.data import gm  # noqa: E402
from training.data.layout import load_dataset  # noqa: E402
from training.data.midi import read_song, touhou_title  # noqa: E402
from training.data.render import render_corpus, render_song, split_of  # noqa: E402

SF2 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
if not Path(SF2).exists():
    SF2 = "/usr/share/sounds/sf2/TimGM6mb.sf2"
pytestmark = pytest.mark.skipif(not Path(SF2).exists(), reason="no GM soundfont installed")

TPB = 480


def _notes(track, channel, pitches, start_beat, n, length_beats=1.0, velocity=90):
    """Append ``n`` notes (cycling over ``pitches``) one per beat, starting at ``start_beat``.
    Returns the absolute tick of the last event for chaining deltas (tracks here are independent)."""
    t = 0
    events = []
    for i in range(n):
        on = int((start_beat + i) * TPB)
        off = on + int(length_beats * TPB) - 10
        p = pitches[i % len(pitches)]
        events.append((on, mido.Message("note_on", channel=channel, note=p, velocity=velocity)))
        events.append((off, mido.Message("note_off", channel=channel, note=p, velocity=0)))
    events.sort(key=lambda e: e[0])
    for tick, msg in events:
        track.append(msg.copy(time=tick - t))
        t = tick


def make_song(path, programs=((0, 35), (1, 0)), drums=True, bars=6, tempo_change=True):
    """A type-1 MIDI: 120 BPM 4/4, then 90 BPM and 3/4 from beat 8; one track per (channel, program)."""
    mid = mido.MidiFile(type=1, ticks_per_beat=TPB)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    meta.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    if tempo_change:
        meta.append(mido.MetaMessage("set_tempo", tempo=666667, time=8 * TPB))
        meta.append(mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0))
    mid.tracks.append(meta)
    n = bars * 4
    for spec in programs:  # (channel, program[, number of notes])
        ch, prog = spec[:2]
        tr = mido.MidiTrack()
        tr.append(mido.Message("program_change", channel=ch, program=prog, time=0))
        _notes(tr, ch, [40, 43, 45, 47] if 32 <= prog < 40 else [60, 64, 67], 0, spec[2] if len(spec) > 2 else n)
        mid.tracks.append(tr)
    if drums:
        tr = mido.MidiTrack()
        _notes(tr, 9, [36, 42, 38, 42], 0, n * 2, length_beats=0.5)
        mid.tracks.append(tr)
    mid.save(str(path))
    return path


@pytest.fixture(scope="module")
def renderer():
    from training.data.synth import Renderer

    r = Renderer(SF2)
    yield r
    r.close()


def rel_err(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))


def test_stems_sum_to_full_render_and_labels(tmp_path, renderer):
    # two bass programs on two channels (one stem "bass", label = the most used one), piano, drums
    p = make_song(tmp_path / "a.mid", programs=((0, 35), (2, 33, 6), (1, 0)))
    song = read_song(p)
    assert song.categories() == ["bass", "drums", "piano"]
    assert song.labels["bass"] == "fretless bass" and gm.program_name(35) == "fretless bass"
    assert song.labels["piano"] == "acoustic grand piano"
    assert song.labels["drums"] == "drum kit"
    r = render_song(song, renderer)
    assert sorted(r["stems"]) == ["bass", "drums", "piano"]
    full = renderer.render(song.notes, song.controls, r["start"], r["end"])
    total = sum(r["stems"].values())
    assert total.shape == full.shape
    assert np.sqrt(np.mean(full ** 2)) > 0.01
    assert rel_err(total, full) < 0.005
    # each stem really is a different signal (not the full mix three times)
    for x in r["stems"].values():
        assert rel_err(x, full) > 0.2


def test_excerpt_sum_and_beats(tmp_path, renderer):
    song = read_song(make_song(tmp_path / "b.mid", bars=10))
    r = render_song(song, renderer, excerpt=4.0, seed=3, key="b")
    n = int(round(4.0 * 16000))
    assert all(len(x) == n for x in r["stems"].values())
    full = renderer.render(song.notes, song.controls, r["start"], r["end"], preroll=2.0)
    assert rel_err(sum(r["stems"].values()), full) < 0.005
    # beats shifted to the excerpt and inside it
    assert np.all((r["beats"] >= 0) & (r["beats"] < 4.0))
    assert np.allclose(r["beats"] + r["start"], song.beats[(song.beats >= r["start"]) & (song.beats < r["end"])])


def test_beats_follow_tempo_map_and_time_signature(tmp_path):
    song = read_song(make_song(tmp_path / "c.mid", bars=6))
    # 8 beats at 120 BPM, then 0.666667 s per beat
    first = np.arange(8) * 0.5
    later = 4.0 + np.arange(1, 20) * 0.666667
    exp = np.concatenate([first, [4.0], later])
    got = song.beats[: len(exp)]
    assert np.allclose(got, exp[: len(got)], atol=1e-4), got
    assert len(got) >= 20
    # downbeats: every 4 beats in 4/4, then every 3 beats in 3/4 from the change at 4.0 s
    assert np.allclose(song.downbeats[:4], [0.0, 2.0, 4.0, 6.0], atol=1e-4)
    # a compound metre: 6/8 has two dotted-quarter beats per bar
    from training.data.midi import beat_grid

    b, d = beat_grid([(0, 6, 8)], TPB, 4 * 3 * TPB)
    assert np.allclose(np.diff(b), 1.5 * TPB) and np.allclose(np.diff(d), 3 * TPB)


def test_render_cli_layout_resume_and_bad_input(tmp_path):
    midi = tmp_path / "midi"
    midi.mkdir()
    make_song(midi / "good1.mid")
    make_song(midi / "good2.mid", programs=((0, 81), (1, 25)), drums=False)
    make_song(midi / "onestem.mid", programs=((0, 0),), drums=False)
    (midi / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage that is not midi")
    out = tmp_path / "out"
    rep = render_corpus([midi], out, SF2, jobs=1, excerpt=None, progress=False)
    assert rep["rendered"] == 2 and rep["skipped"] == 2
    reasons = " ".join(s["reason"] for s in rep["skipped_tracks"])
    assert "unreadable MIDI" in reasons and "fewer than 2" in reasons
    saved = json.loads((out / "render_report.json").read_text())
    assert saved["skipped"] == 2
    tracks = load_dataset(out)
    assert len(tracks) == 2
    cats = {s.category for t in tracks for s in t.stems.values()}
    labels = {s.label for t in tracks for s in t.stems.values()}
    assert {"bass", "drums", "piano", "synth lead", "guitar"} <= cats
    assert {"fretless bass", "sawtooth lead", "steel guitar", "drum kit"} <= labels
    assert all(t.beats and t.beats[1] == pytest.approx(0.5) for t in tracks)
    import soundfile as sf

    info = sf.info(str(next(iter(tracks[0].stems.values())).path))
    assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["train"] + splits["validation"]) == sorted(t.track_id for t in tracks)
    # resume: nothing re-rendered, finished tracks untouched, skipped ones not retried
    mtimes = {t.track_id: (t.path / "track.json").stat().st_mtime_ns for t in tracks}
    make_song(midi / "good3.mid", programs=((0, 56), (1, 40)), drums=False)
    rep2 = render_corpus([midi], out, SF2, jobs=1, excerpt=None, progress=False)
    assert rep2["already_done"] == 2 and rep2["rendered"] == 1 and rep2["skipped"] == 2
    for t in load_dataset(out):
        if t.track_id in mtimes:
            assert (t.path / "track.json").stat().st_mtime_ns == mtimes[t.track_id]
    assert not list(out.glob(".tmp-*"))


def test_assigned_instruments_pop909_style(tmp_path):
    # POP909: three tracks named MELODY/BRIDGE/PIANO, all program 0 -> three distinct families
    mid = mido.MidiFile(type=1, ticks_per_beat=TPB)
    for i, name in enumerate(("MELODY", "BRIDGE", "PIANO")):
        tr = mido.MidiTrack()
        tr.append(mido.MetaMessage("track_name", name=name, time=0))
        _notes(tr, i, [60 + i * 4], 0, 8)
        mid.tracks.append(tr)
    d = tmp_path / "pop909" / "001"
    d.mkdir(parents=True)
    mid.save(str(d / "001.mid"))
    a = read_song(d / "001.mid", assign="pop909", key="x1")
    assert len(a.categories()) == 3
    again = read_song(d / "001.mid", assign="pop909", key="x1")
    assert a.labels == again.labels  # deterministic per song
    seen = {tuple(sorted(read_song(d / "001.mid", assign="pop909", key=f"k{i}").labels.values())) for i in range(12)}
    assert len(seen) > 3  # labels vary across songs


def test_touhou_titles_and_grouped_split():
    a = touhou_title("6. The Hundredth Black Market (KR.Palto47 - XG).mid")
    b = touhou_title("6. The Hundredth Black Market (gondayu).mid")
    c = touhou_title("7. Lunatic Dreamer(ryoya1295).mid")
    d = touhou_title("01 - Witch of Love Potion (ZUN).mid")
    assert a == b == "thehundredthblackmarket"
    assert c == "lunaticdreamer" and d == "witchoflovepotion"
    assert touhou_title("Satori Maiden ~ 3rd Eye (Bessem).mid") == "satorimaiden"
    groups = [f"touhou:g{i}" for i in range(2000)]
    val = [g for g in groups if split_of(g, 0.08, 0) == "validation"]
    assert 0.05 < len(val) / len(groups) < 0.11
    assert all(split_of(g, 0.08, 0) == split_of(g, 0.08, 0) for g in groups[:50])


def test_cli_render_with_limit_and_excerpt(tmp_path, capsys):
    from training.data.__main__ import main

    midi = tmp_path / "midi"
    midi.mkdir()
    for i in range(3):
        make_song(midi / f"s{i}.mid", programs=((0, 33 + i), (1, 40 + i)), drums=False, bars=4, tempo_change=False)
    out = tmp_path / "out"
    assert main(["render", str(midi), str(out), "--soundfont", SF2, "--limit", "2", "--excerpt", "3"]) == 0
    assert "rendered=2" in capsys.readouterr().out
    tracks = load_dataset(out)
    assert len(tracks) == 2
    import soundfile as sf

    for t in tracks:
        assert all(abs(sf.info(str(s.path)).duration - 3.0) < 1e-3 for s in t.stems.values())
        assert t.meta["excerpt"][1] - t.meta["excerpt"][0] == pytest.approx(3.0)
    # raising the limit keeps the first choice and adds one song
    assert main(["render", str(midi), str(out), "--soundfont", SF2, "--limit", "3", "--excerpt", "3"]) == 0
    assert "already_done=2, rendered=1" in capsys.readouterr().out


def test_in_process_render_matches_fluidsynth_cli(tmp_path, renderer):
    """The in-process event scheduler plays the file as FluidSynth's own MIDI player (its
    command line), up to the player's one-block (64-sample) start latency."""
    import shutil
    import subprocess

    import soundfile as sf

    if shutil.which("fluidsynth") is None:
        pytest.skip("no fluidsynth command")
    p = make_song(tmp_path / "a.mid", programs=((0, 35), (1, 0)), bars=3)
    wav = tmp_path / "cli.wav"
    subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.3", "-F", str(wav), "-r", "16000",
                    SF2, str(p)], check=True, capture_output=True, timeout=60)
    y, sr = sf.read(str(wav), dtype="float32")
    y = y.mean(axis=1) if y.ndim == 2 else y
    assert sr == 16000
    song = read_song(p)
    x = renderer.render(song.notes, song.controls, 0.0, len(y) / sr)
    lag = 64
    n = min(len(x), len(y)) - lag
    assert rel_err(x[:n], y[lag: lag + n]) < 0.005


def test_no_sound_leaks_into_the_next_render(tmp_path, renderer):
    """A render cut while long-release notes sound must not leak into the next render."""
    song = read_song(make_song(tmp_path / "pad.mid", programs=((0, 89), (1, 48)), drums=True, bars=4,
                               tempo_change=False))
    renderer.render(song.notes, song.controls, 0.0, 3.0)  # stops mid-song, voices still sounding
    silence = renderer.render([], [], 0.0, 3.0)
    assert np.abs(silence).max() == 0.0
    from training.data.synth import Renderer

    fresh = Renderer(SF2)
    a = fresh.render(song.notes, song.controls, 0.0, 4.0)
    fresh.close()
    renderer.render(song.notes, song.controls, 1.0, 2.5)
    b = renderer.render(song.notes, song.controls, 0.0, 4.0)
    # a reused synth is not bit-identical to a fresh one (voice objects keep some DSP state), but
    # the difference is a fraction of a percent, not a leak of other notes
    assert rel_err(b, a) < 0.01

"""Varied renders: deterministic draws, key/tempo applied to the whole song, instruments within
family, sample drum kits, the mix chain, and a varied set rendered end to end."""
import json

import numpy as np
import pytest

mido = pytest.importorskip("mido")

from training.data import gm  # noqa: E402
from training.data import vary  # noqa: E402
from training.data.midi import read_song  # noqa: E402

from test_data_render import make_song  # noqa: E402


@pytest.fixture
def song(tmp_path):
    p = tmp_path / "song.mid"
    make_song(p, programs=((0, 33), (1, 0), (2, 73)))
    return read_song(p)


def test_variant_is_deterministic_and_differs_across_variants(song):
    r = vary.TRAIN_RECIPE
    a, va = vary.vary_song(song, r, seed=0, variant=0, key="k")
    b, vb = vary.vary_song(song, r, seed=0, variant=0, key="k")
    assert va.to_dict() == vb.to_dict()
    assert [(n.pitch, n.program, n.start) for n in a.notes] == [(n.pitch, n.program, n.start) for n in b.notes]
    draws = {json.dumps(vary.vary_song(song, r, 0, v, "k")[1].to_dict(), sort_keys=True) for v in range(6)}
    assert len(draws) > 1


def test_key_and_tempo_apply_to_the_whole_song(song):
    r = vary.SetRecipe("t", melodic=("fluidr3",), drums=("fluidr3",), transpose=3, tempo=0.15)
    for v in range(8):
        new, var = vary.vary_song(song, r, 0, v, "k")
        assert -3 <= var.transpose <= 3 and 0.85 - 1e-9 <= var.tempo <= 1.15 + 1e-9
        for old, n in zip(song.notes, new.notes):
            if old.channel == gm.DRUM_CHANNEL:
                assert n.pitch == old.pitch  # drums never transposed
            else:
                assert n.pitch == old.pitch + var.transpose
            assert n.start == pytest.approx(old.start / var.tempo)
        np.testing.assert_allclose(new.beats, song.beats / var.tempo)
        np.testing.assert_allclose(new.downbeats, song.downbeats / var.tempo)
        assert new.end == pytest.approx(song.end / var.tempo)


def test_programs_stay_in_family_without_cross_family_draws(song):
    r = vary.SetRecipe("t", melodic=("fluidr3",), drums=("fluidr3",), cross_family=0.0)
    for v in range(10):
        new, _ = vary.vary_song(song, r, 0, v, "k")
        fams = {(n.channel, gm.family(n.program)) for n in new.notes if n.channel != gm.DRUM_CHANNEL}
        assert fams == {(0, "bass"), (1, "piano"), (2, "pipe")}
        assert set(new.labels) == set(new.categories())


def test_ablation_recipes_vary_one_factor_each(song):
    """The plain ablation recipe keeps every program, key and tempo; each other ablation recipe
    differs from it in its one factor only."""
    base = vary.ABLATION_RECIPES["abl-base"]
    for v in range(6):
        new, var = vary.vary_song(song, base, 0, v, "k")
        assert var.transpose == 0 and var.tempo == 1.0
        assert [(n.program, n.pitch, n.start) for n in new.notes] == [(n.program, n.pitch, n.start) for n in song.notes]
    drawn = {tuple(sorted(vary.vary_song(song, vary.ABLATION_RECIPES["abl-instruments"], 0, v, "k")[1].programs.items()))
             for v in range(6)}
    assert len(drawn) > 1
    from dataclasses import asdict

    b = asdict(base)
    changed = {name: {k for k, x in asdict(r).items() if x != b[k] and k != "name"}
               for name, r in vary.ABLATION_RECIPES.items()}
    assert changed == {"abl-base": set(), "abl-soundfont": {"melodic", "drums"}, "abl-instruments": {"draw_programs"},
                       "abl-keytempo": {"transpose", "tempo"}, "abl-room": {"reverb", "reverb_prob", "effects"}}


def test_cross_family_draws_happen_for_lead_parts_but_never_for_bass(song):
    r = vary.SetRecipe("t", melodic=("fluidr3",), drums=("fluidr3",), cross_family=1.0)
    fams = set()
    for v in range(20):
        new, _ = vary.vary_song(song, r, 0, v, "k")
        fams |= {gm.family(n.program) for n in new.notes if n.channel == 2}
        assert all(gm.family(n.program) == "bass" for n in new.notes if n.channel == 0)
    assert len(fams) > 2  # the flute part became other families


def test_mix_chain_keeps_length_and_gain(rng):
    x = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    y = vary.apply_mix(x, {"gain_db": -6.0}, None, 16000)
    np.testing.assert_allclose(y, x * 10 ** (-6 / 20), rtol=1e-5, atol=1e-7)
    ir = vary.room_impulse(0.8, 16000, np.random.default_rng(0))
    assert np.isclose((ir.astype(np.float64) ** 2).sum(), 1.0, rtol=1e-3)
    full = {"gain_db": 3.0, "low_shelf": [150.0, 4.0], "high_shelf": [4000.0, -4.0], "lowpass_hz": 5000.0,
            "drive": 2.0, "chorus": [0.8, 0.3], "reverb": 0.3}
    z = vary.apply_mix(x, full, ir, 16000)
    assert z.shape == x.shape and np.isfinite(z).all() and not np.allclose(z, x)


def test_shelf_filter_gain_at_dc_and_nyquist():
    b, a = vary._biquad_shelf(200.0, 6.0, 16000, high=False)
    dc = np.polyval(b[::-1], 1.0) / np.polyval(a[::-1], 1.0)
    assert 20 * np.log10(abs(dc)) == pytest.approx(6.0, abs=0.05)
    b, a = vary._biquad_shelf(3000.0, -6.0, 16000, high=True)
    ny = np.polyval(b[::-1], -1.0) / np.polyval(a[::-1], -1.0)
    assert 20 * np.log10(abs(ny)) == pytest.approx(-6.0, abs=0.05)


def _kit(tmp_path):
    import soundfile as sf

    kit = tmp_path / "kit"
    kit.mkdir()
    t = np.arange(4000) / 44100
    for name, f in (("kick.wav", 60.0), ("snare.wav", 200.0), ("hat.wav", 5000.0)):
        sf.write(str(kit / name), (np.sin(2 * np.pi * f * t) * np.exp(-t * 30)).astype(np.float32), 44100)
    inst = "".join(
        f"<instrument><id>{i}</id><name>{n}</name><volume>1</volume>"
        f"<layer><filename>{fn}</filename><min>0</min><max>1</max><gain>1</gain></layer></instrument>"
        for i, (n, fn) in enumerate((("Kick", "kick.wav"), ("Snare", "snare.wav"), ("Closed HH", "hat.wav"))))
    (kit / "drumkit.xml").write_text(
        f'<?xml version="1.0"?><drumkit_info xmlns="http://www.hydrogen-music.org/drumkit"><name>T</name>'
        f"<instrumentList>{inst}</instrumentList></drumkit_info>")
    return kit


def test_sample_drums_play_gm_notes_from_a_hydrogen_kit(tmp_path):
    from training.data.midi import Note

    d = vary.SampleDrums(_kit(tmp_path), sr=16000)
    assert d.usable
    notes = [Note(0.5, 0.6, 9, 36, 100, 0, "drums"), Note(1.0, 1.1, 9, 38, 100, 0, "drums"),
             Note(1.5, 1.6, 9, 42, 20, 0, "drums"), Note(1.7, 1.8, 9, 99, 100, 0, "drums")]  # 99: unmapped
    x = d.render(notes, [], 0.0, 2.0)
    assert x.shape == (32000,)
    assert np.abs(x[:7900]).max() == 0.0  # nothing before the first hit
    assert np.abs(x[8000:8400]).max() > 0.05  # the kick at 0.5 s
    loud = np.abs(x[16000:16400]).max()
    soft = np.abs(x[24000:24400]).max()
    assert soft < loud  # velocity scales the hit
    # deterministic
    np.testing.assert_array_equal(x, d.render(notes, [], 0.0, 2.0))


SF_OK = (vary.SF2_DIR / vary.GM_SOUNDFONTS["fluidr3"]).is_file()


@pytest.mark.skipif(not SF_OK, reason="fluid-soundfont-gm not installed (scripts/setup_system.sh installs it)")
def test_render_varied_end_to_end(tmp_path):
    pytest.importorskip("fluidsynth")
    from training.data.layout import load_dataset
    from training.data.render import render_varied

    midi = tmp_path / "touhou"
    midi.mkdir()
    make_song(midi / "a.mid", programs=((0, 33), (1, 0)), bars=3, tempo_change=False)
    make_song(midi / "b.mid", programs=((0, 34), (1, 24)), bars=3, tempo_change=False)
    recipe = vary.SetRecipe("test", melodic=("fluidr3",), drums=("fluidr3", "fluidr3"))
    out = tmp_path / "out"
    rep = render_varied([midi], out, recipe, variants=(0, 1), jobs=1, force_split="validation", progress=False)
    assert rep["rendered"] == 4 and rep["skipped"] == 0
    tracks = load_dataset(out, "validation")
    assert len(tracks) == 4
    docs = {t.track_id: json.loads((t.path / "track.json").read_text()) for t in tracks}
    for tid, doc in docs.items():
        assert tid.endswith(("-v0", "-v1"))
        assert doc["recipe"] == "test" and set(doc["variant"]) >= {"transpose", "tempo", "programs", "sources", "mix"}
        tempo = doc["variant"]["tempo"]
        assert doc["beats"][1] == pytest.approx(0.5 / tempo, abs=2e-3)  # 120 BPM scaled
    # a second run renders nothing and changes nothing (resume)
    before = {p: p.stat().st_mtime for p in out.rglob("*.wav")}
    rep2 = render_varied([midi], out, recipe, variants=(0, 1), jobs=1, force_split="validation", progress=False)
    assert rep2["rendered"] == 0 and rep2["already_done"] == 4
    assert before == {p: p.stat().st_mtime for p in out.rglob("*.wav")}
    # only_tracks: just the songs named (their ids as the default render writes them)
    want = sorted(docs)[0].rsplit("-v", 1)[0]
    rep3 = render_varied([midi], tmp_path / "one", recipe, variants=(0,), jobs=1, force_split="validation",
                         progress=False, only_tracks=[want])
    assert rep3["rendered"] == 1 and [t.track_id for t in load_dataset(tmp_path / "one", "validation")] == [f"{want}-v0"]


def test_missing_sources_are_named():
    r = vary.SetRecipe("t", melodic=("fluidr3",), drums=("hydrogen:no-such-kit",))
    miss = vary.missing_sources(r)
    assert any("no-such-kit" in m for m in miss)


def test_slow_factor_puts_the_song_at_the_drawn_tempo():
    import math

    beats = np.arange(0.0, 60.0, 60.0 / 155.0)  # 155 BPM
    f = vary.slow_factor(beats, math.log(60.0))
    assert abs(155.0 * f - 60.0) < 1e-6
    assert vary.slow_factor(beats, math.log(20.0)) == 0.3  # clipped
    assert vary.slow_factor(beats[:2], math.log(60.0)) == 1.0  # too few beats: unchanged


def test_train_slow_puts_each_variant_in_its_tempo_range(song):
    r = vary.TRAIN_SLOW_RECIPE
    lo, hi = r.slow_bpm
    f_lo, f_hi = vary.SLOW_FACTOR_RANGE
    own = 60.0 / float(np.median(np.diff(song.beats)))
    seen = []
    for v in range(8):
        new, var = vary.vary_song(song, r, 0, v, "k")
        bpm = 60.0 / float(np.median(np.diff(new.beats)))
        if f_lo < var.tempo < f_hi:  # not clipped: the drawn tempo itself
            assert lo - 1e-6 <= bpm <= hi + 1e-6
        assert bpm == pytest.approx(own * var.tempo)
        seen.append(bpm)
    assert max(seen) - min(seen) > 1.0  # the tempo is drawn, not fixed

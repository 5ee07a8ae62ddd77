"""The tempo + key heuristic baseline: its features measure key and tempo, and its retrieval
ranks the stem that shares both first."""
import numpy as np
import pytest

from engine import keytempo as h

SR = 16000


def tone(f, seconds=8.0, amp=0.3):
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)


def clicks(bpm, seconds=8.0, f=1000.0):
    x = np.zeros(int(SR * seconds), dtype=np.float32)
    period = 60.0 / bpm
    n = np.arange(int(0.02 * SR))
    burst = np.sin(2 * np.pi * f * n / SR) * np.exp(-n / (0.004 * SR))
    for k in range(int(seconds / period)):
        s = int(k * period * SR)
        x[s:s + len(burst)] += burst[: len(x) - s]
    return x


@pytest.mark.parametrize("f,pc", [(440.0, 9), (261.63, 0), (392.0, 7)])
def test_chroma_peaks_at_the_pitch_class(f, pc):
    c = h.chroma(tone(f))
    assert int(np.argmax(c)) == pc


@pytest.mark.parametrize("bpm", [90.0, 120.0])
def test_tempogram_peaks_at_the_beat_period(bpm):
    tg = h.tempogram(clicks(bpm))
    lags = (np.arange(len(tg)) + int(h.LAG_MIN_S * h.ONSET_RATE)) / h.ONSET_RATE
    best = lags[int(np.argmax(tg))]
    period = 60.0 / bpm
    assert min(abs(best - period), abs(best - 2 * period)) < 0.02


def test_describe_is_unit_and_silence_is_zero():
    v = h.describe(tone(440.0) + clicks(120.0))
    assert v.shape == (12 + len(h.tempogram(clicks(120.0))),)
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
    assert np.abs(h.describe(np.zeros(SR * 8, dtype=np.float32))).max() == 0.0



def three_songs(d, seconds: float, rng=None) -> None:
    """A validation set of three songs (key, tempo): each a pad (random gain with ``rng``) and a pulse."""
    import json

    import soundfile as sf

    ids = []
    for i, (f, bpm) in enumerate(((440.0, 120.0), (261.63, 90.0), (329.63, 100.0))):
        t = d / f"t{i}"
        t.mkdir(parents=True)
        gain = 1.0 if rng is None else 0.5 + 0.5 * rng.random()
        sf.write(str(t / "pad.wav"), tone(f, seconds=seconds) * gain, SR, subtype="PCM_16")
        sf.write(str(t / "pulse.wav"), clicks(bpm, seconds=seconds, f=2 * f), SR, subtype="PCM_16")
        (t / "track.json").write_text(json.dumps({"stems": {
            "pad": {"label": "warm pad", "category": "synth pad"},
            "pulse": {"label": "marimba", "category": "chromatic percussion"}}}))
        ids.append(f"t{i}")
    (d / "splits.json").write_text(json.dumps({"train": [], "validation": ids}))

def test_heuristic_prefers_the_stem_in_the_same_key_and_tempo(tmp_path):
    """Two songs (A major at 120 BPM, C major at 90 BPM), each a chord pad and a pulse in its key:
    the pulse of each song is nearer its own song's pad than the other song's pad, and the
    retrieval protocol runs on the heuristic."""
    import json

    import soundfile as sf

    from training.evaluate import evaluate_retrieval

    songs = {"a": (440.0, 554.37, 659.25, 120.0), "c": (261.63, 329.63, 392.0, 90.0)}
    root = tmp_path / "ds"
    feats = {}
    for tid, (f1, f2, f3, bpm) in songs.items():
        d = root / tid
        d.mkdir(parents=True)
        pad = (tone(f1) + tone(f2)) * (0.6 + 0.4 * (clicks(bpm, f=100.0) > 0))  # pumping pad
        pulse = clicks(bpm, f=f3) * 0.5 + tone(f3, amp=0.1)
        sf.write(str(d / "pad.wav"), pad, SR, subtype="PCM_16")
        sf.write(str(d / "pulse.wav"), pulse, SR, subtype="PCM_16")
        feats[tid] = (h.describe(pad), h.describe(pulse))
        (d / "track.json").write_text(json.dumps({"stems": {
            "pad": {"label": "warm pad", "category": "synth pad"},
            "pulse": {"label": "marimba", "category": "chromatic percussion"}}}))
    for own, other in (("a", "c"), ("c", "a")):
        pulse = feats[own][1]
        assert pulse @ feats[own][0] > pulse @ feats[other][0]
    (root / "splits.json").write_text(json.dumps({"train": [], "validation": ["a", "c"]}))
    r = evaluate_retrieval("heuristic", root, "validation", max_chunks=1, threads=1)
    assert r["phase"] == "heuristic" and r["n_candidates"] == 4 and r["overall"]["n"] == 4


def test_suite_reads_only_the_embedded_windows_and_matches_whole_tracks(tmp_path, monkeypatch):
    """evaluate_suite keeps only the windows retrieval embeds: the figures equal those computed
    from whole tracks, on a set whose tracks are longer than max_chunks windows."""


    from training import evaluate as ev

    root = tmp_path / "sets"
    d = root / "xsf"
    three_songs(d, 40.0, np.random.default_rng(0))
    monkeypatch.setitem(ev.VALIDATION_SETS, "only-this", {"dir": "xsf", "track_list": None})
    suite = ev.evaluate_suite("heuristic", root, sets=["only-this"], max_chunks=2)
    whole = ev.evaluate_retrieval("heuristic", d, "validation", max_chunks=2, threads=1,
                                  tracks=ev.read_tracks(d, "validation"))
    got = suite["sets"]["only-this"]
    assert got["overall"] == whole["overall"] and got["n_candidates"] == 6
    chunked = ev.read_tracks(d, "validation", chunks=(2, 128000))
    assert all(len(s[3]) == 2 * 128000 for t in chunked for s in t.stems)


def test_cli_saves_embeddings_and_the_fusion_sweep_spans_model_to_heuristic(tmp_path, capsys):
    """``training eval retrieval --save-embeddings --json`` on the heuristic, then
    ``training.fusion`` against a model's embeddings of the same stems: weight 0 gives the
    model's figures, weight 1 the heuristic's, and the weight is chosen on ``dev``."""
    import json


    from training import evaluate as ev
    from training import fusion
    from training.__main__ import main as train_main

    d = tmp_path / "ds"
    three_songs(d, 9.0)
    (tmp_path / "h").mkdir()
    assert train_main(["eval", "retrieval", "--data", str(d), "--model", "heuristic", "--max-chunks", "1",
                       "--save-embeddings", str(tmp_path / "h" / "dev.npz"), "--json", str(tmp_path / "h.json")]) == 0
    heur = json.loads((tmp_path / "h.json").read_text())
    h = ev.RetrievalEmbeddings.load(tmp_path / "h" / "dev.npz")
    assert h.Q.shape == (6, 188) and [m[0] for m in h.meta] == ["t0", "t0", "t1", "t1", "t2", "t2"]
    rng = np.random.default_rng(0)
    q = rng.standard_normal((6, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    (tmp_path / "m").mkdir()
    model = ev.RetrievalEmbeddings(q, q.copy(), h.meta, "m.pt", "jepa", "film")  # the model finds every stem
    model.save(tmp_path / "m" / "dev.npz")
    assert fusion.main(["--model", str(tmp_path / "m"), "--keytempo", str(tmp_path / "h"), "--weights", "0:1:0.5",
                        "--json", str(tmp_path / "f.json")]) == 0
    out = json.loads((tmp_path / "f.json").read_text())
    rows = out["sweep"]["dev"]
    assert rows["0.00"]["R@1"] == 100.0 and rows["1.00"]["R@1"] == heur["overall"]["R@1"]
    assert rows["1.00"]["nrank_median"] == heur["overall"]["nrank_median"]
    assert out["chosen"] == 0.0  # the model alone is perfect here; ties go to the lower weight
    assert "chosen on dev" in capsys.readouterr().out

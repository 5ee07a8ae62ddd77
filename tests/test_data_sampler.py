"""StemSampler invariants on a synthetic dataset with known silent regions."""
import json
import time

import numpy as np
import pytest
import soundfile as sf

from training.config import class_index
from training.data.layout import DatasetError
from training.data.sampler import StemSampler

SR = 16000


def _stem(sec, f, on=None, amp=0.1, seed=0):
    """A tone with noise; ``on`` = list of (start, end) seconds where it plays (else silent)."""
    t = np.arange(int(sec * SR)) / SR
    x = amp * np.sin(2 * np.pi * f * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    if on is not None:
        m = np.zeros(t.size, bool)
        for a, b in on:
            m[int(a * SR): int(b * SR)] = True
        x = np.where(m, x, 0.0)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    spec = {
        # track: {stem: (label, category, on-intervals)}
        "a": {"bass": ("fretless bass", "bass", None), "drums": ("drum kit", "drums", [(0, 10)]),
              "piano": ("electric piano 1", "piano", [(10, 20)]), "lead": ("flute", "pipe", [(5, 15)])},
        "b": {"bass": ("synth bass 1", "bass", None), "strings": ("violin", "strings", None)},
        "short": {"bass": ("acoustic bass", "bass", None), "drums": ("jazz drum kit", "drums", None)},
    }
    lengths = {"a": 20.0, "b": 12.0, "short": 5.0}
    for tid, stems in spec.items():
        d = root / tid
        d.mkdir()
        doc = {"stems": {}, "beats": list(np.arange(0, lengths[tid], 0.5)) if tid != "b" else []}
        for i, (sid, (lab, cat, on)) in enumerate(stems.items()):
            sf.write(str(d / f"{sid}.wav"), _stem(lengths[tid], 110 * (i + 1), on, seed=i), SR, subtype="PCM_16")
            doc["stems"][sid] = {"label": lab, "category": cat}
        (d / "track.json").write_text(json.dumps(doc))
    # a track with a NaN stem (float WAV): that stem is reported and skipped
    d = root / "nan"
    d.mkdir()
    bad = _stem(10, 200)
    bad[100] = np.nan
    sf.write(str(d / "x.wav"), bad, SR, subtype="FLOAT")
    sf.write(str(d / "y.wav"), _stem(10, 300), SR, subtype="FLOAT")
    sf.write(str(d / "z.wav"), _stem(10, 400), SR, subtype="FLOAT")
    (d / "track.json").write_text(json.dumps({"stems": {k: {"label": k, "category": "other"} for k in "xyz"}}))
    (root / "splits.json").write_text(json.dumps({"train": ["a", "b", "short", "nan"], "validation": ["b"]}))
    return root, spec


def test_invariants(ds):
    root, spec = ds
    with pytest.warns(UserWarning, match="skipped"):
        s = StemSampler(root, "train", seconds=8.0, label_mode="mixed", seed=0)
    assert len(s) == 4
    assert any("nan/x" in e and "non-finite" in e for e in s.errors)
    assert {"fretless bass", "bass", "flute", "pipe", "drums", "drum kit", "other"} <= set(s.labels)
    rng = np.random.default_rng(0)
    fine_hits = cat_hits = 0
    seen_targets = set()
    for _ in range(400):
        d = s.sample(rng)
        assert d["mix"].shape == (128000,) and d["target"].shape == (128000,)
        assert d["mix"].dtype == np.float32 and d["target"].dtype == np.float32
        ctx = d["context_ids"]
        assert len(ctx) >= 1 and d["stem_id"] not in ctx
        ti = s.track_ids.index(d["track_id"])
        off = int(round(d["offset"] * SR))
        ids = s._tracks[ti].stem_ids
        expect = sum(s.crop(ti, ids.index(c), off) for c in ctx)
        assert np.allclose(d["mix"], expect, atol=1e-6)
        # target is active: loud enough over a good part of the crop
        assert np.sqrt(np.mean(d["target"] ** 2)) > 0.02
        # context stems are active too (for track "a", silent stems never get in)
        for c in ctx:
            assert np.sqrt(np.mean(s.crop(ti, ids.index(c), off) ** 2)) > 0.02
        tr = s._tracks[ti].track.stems[d["stem_id"]]
        assert d["fine"] == tr.label and d["category"] == tr.category
        assert d["class_idx"] == class_index(d["category"])
        assert d["label"] in (d["fine"], d["category"])
        fine_hits += d["label"] == d["fine"] and d["fine"] != d["category"]
        cat_hits += d["label"] == d["category"]
        seen_targets.add((d["track_id"], d["stem_id"]))
        assert d["track_id"] != "nan" or d["stem_id"] != "x"
    assert fine_hits > 100 and cat_hits > 100
    assert ("a", "piano") in seen_targets and ("a", "drums") in seen_targets
    # the short track (5 s) is zero-padded
    assert ("short", "bass") in seen_targets


def test_offsets_respect_activity(ds):
    root, _ = ds
    s = StemSampler(root, "train", seconds=8.0, seed=0)
    ti = s.track_ids.index("a")
    ids = s._tracks[ti].stem_ids
    # at 0 s: bass, drums and (from 5 s, 3 of 8 s = 37 %) lead active; piano silent
    act = {ids[i] for i in s.active(ti, 0)}
    assert act == {"bass", "drums", "lead"}
    act = {ids[i] for i in s.active(ti, 12 * SR)}
    assert act == {"bass", "piano", "lead"}


def test_label_modes_beats_and_speed(ds):
    root, _ = ds
    rng = np.random.default_rng(1)
    s = StemSampler(root, "train", label_mode="fine", seed=0)
    for _ in range(50):
        d = s.sample(rng)
        assert d["label"] == d["fine"]
    c = StemSampler(root, "train", label_mode="category", seed=0)
    for _ in range(50):
        d = c.sample(rng)
        assert d["label"] == d["category"]
    for _ in range(50):
        b = s.sample_beats(rng)
        assert b["track_id"] in ("a", "short")  # "b" has no beats
        assert b["mix"].shape == (128000,)
        assert np.all((b["beats"] >= 0) & (b["beats"] < 8.0)) and len(b["beats"]) > 0
        # beats of these tracks are every 0.5 s from 0: relative beats are offset-aligned
        assert np.allclose((b["beats"] + b["offset"]) % 0.5, 0, atol=1e-6) or np.allclose(
            (b["beats"] + b["offset"]) % 0.5, 0.5, atol=1e-6)
    t = time.perf_counter()
    for _ in range(300):
        s.sample(rng)
    per = (time.perf_counter() - t) / 300
    assert per < 0.02, f"{per * 1e3:.1f} ms per sample"  # thousands per minute on one core
    batch = s.sample_batch(rng, 4)
    assert batch["mix"].shape == (4, 128000) and batch["class_idx"].shape == (4,)
    with pytest.raises(ValueError):
        StemSampler(root, "train", label_mode="nope")
    v = StemSampler(root, "validation", max_tracks=1)
    assert len(v) == 1 and v.track_ids == ["b"]


def test_no_usable_tracks(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    sf.write(str(d / "a.wav"), _stem(3, 100), SR)
    (d / "track.json").write_text(json.dumps({"stems": {"a": {"label": "a", "category": "bass"}}}))
    with pytest.raises(DatasetError):
        StemSampler(tmp_path, split=None)

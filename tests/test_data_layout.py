"""Dataset layout loader and the MUSDB/MoisesDB converters, on small fixtures made here."""
import json

import numpy as np
import pytest
import soundfile as sf

from training.data.convert import convert_moisesdb, convert_musdb
from training.data.layout import DatasetError, dataset_stats, load_dataset, load_track

SR = 16000


def tone(f, sec=1.0, sr=SR, amp=0.1):
    t = np.arange(int(sec * sr)) / sr
    return (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)


def make_track(root, tid, stems=("bass", "drums"), beats=None, ext=".wav"):
    d = root / tid
    d.mkdir(parents=True)
    for i, s in enumerate(stems):
        sf.write(str(d / f"{s}{ext}"), tone(100 + 50 * i), SR)
    doc = {"stems": {s: {"label": f"{s} fine", "category": s} for s in stems}}
    if beats is not None:
        doc["beats"] = beats
    (d / "track.json").write_text(json.dumps(doc))
    return d


def test_load_dataset_ok_and_splits(tmp_path):
    make_track(tmp_path, "t1", beats=[0.0, 0.5])
    make_track(tmp_path, "t2", stems=("bass", "drums", "keys"), ext=".flac")
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["t1"], "validation": ["t2"]}))
    tracks = load_dataset(tmp_path)
    assert [t.track_id for t in tracks] == ["t1", "t2"]
    assert tracks[0].beats == [0.0, 0.5] and tracks[1].beats is None
    assert tracks[1].stems["keys"].label == "keys fine" and tracks[1].stems["keys"].path.suffix == ".flac"
    assert [t.track_id for t in load_dataset(tmp_path, "validation")] == ["t2"]
    x = tracks[0].stems["bass"].load()
    assert x.dtype == np.float32 and len(x) == SR
    with pytest.raises(DatasetError, match="no split 'test'"):
        load_dataset(tmp_path, "test")
    st = dataset_stats(tmp_path)
    assert st["tracks"] == 2 and st["stems"] == 5 and st["categories"]["bass"] == 2


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="no tracks"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such"):
        load_dataset(tmp_path / "nope")
    make_track(tmp_path, "t1")
    with pytest.raises(DatasetError, match="no splits.json"):
        load_dataset(tmp_path, "train")


def test_track_json_must_match_files(tmp_path):
    d = make_track(tmp_path, "t1")
    (d / "drums.wav").unlink()
    with pytest.raises(DatasetError, match="'drums' is listed .* no audio file"):
        load_track(d)
    d2 = make_track(tmp_path, "t2")
    sf.write(str(d2 / "extra.wav"), tone(300), SR)
    with pytest.raises(DatasetError, match="not listed"):
        load_track(d2)
    sf.write(str(d2 / "mixture.wav"), tone(300), SR)  # a mixture file is allowed
    (d2 / "extra.wav").unlink()
    assert sorted(load_track(d2).stems) == ["bass", "drums"]
    d3 = make_track(tmp_path, "t3")
    (d3 / "track.json").write_text("{not json")
    with pytest.raises(DatasetError, match="malformed JSON"):
        load_track(d3)
    (d3 / "track.json").write_text(json.dumps({"stems": {"bass": {"label": "b"}, "drums": {"label": "d",
                                                                                         "category": "drums"}}}))
    with pytest.raises(DatasetError, match="category"):
        load_track(d3)
    # strict=False skips the broken tracks and keeps the good one
    with pytest.warns(UserWarning):
        good = load_dataset(tmp_path, strict=False)
    assert [t.track_id for t in good] == ["t2"]
    with pytest.raises(DatasetError):
        load_dataset(tmp_path)


def test_convert_musdb(tmp_path):
    src = tmp_path / "musdb"
    for subset, names in (("train", ["Artist - Song A", "Artist - Song B"]), ("test", ["Other - C"])):
        for n in names:
            d = src / subset / n
            d.mkdir(parents=True)
            for i, s in enumerate(("bass", "drums", "vocals", "other", "mixture")):
                st = np.stack([tone(80 * (i + 1), sr=44100), tone(80 * (i + 1), sr=44100)], axis=1)
                sf.write(str(d / f"{s}.wav"), st, 44100)
    bad = src / "test" / "Broken"
    bad.mkdir()
    (bad / "bass.wav").write_bytes(b"RIFF0000WAVEjunk")
    sf.write(str(bad / "drums.wav"), tone(90, sr=44100), 44100)
    out = tmp_path / "out"
    rep = convert_musdb(src, out)
    assert rep["converted"] == 3 and len(rep["skipped"]) == 1
    tracks = load_dataset(out)
    assert len(tracks) == 3
    t = tracks[0]
    assert sorted(t.stems) == ["bass", "drums", "other", "vocals"]
    assert t.stems["vocals"].category == "vocals"
    info = sf.info(str(t.stems["bass"].path))
    assert info.samplerate == 16000 and info.channels == 1
    assert abs(info.duration - 1.0) < 0.01
    assert not (t.path / "mixture.wav").exists()
    assert [x.track_id for x in load_dataset(out, "test")] == ["other_c"]
    assert len(load_dataset(out, "train")) == 2


def test_convert_moisesdb(tmp_path):
    src = tmp_path / "moises"
    uid = "0a1b2c3d-uuid"
    d = src / uid
    stems = [
        {"stemName": "bass", "tracks": [{"id": "b1", "trackType": "bass guitar", "extension": "wav"}]},
        {"stemName": "vocals", "tracks": [
            {"id": "v1", "trackType": "lead female singer", "extension": "wav"},
            {"id": "v2", "trackType": "lead female singer", "extension": "wav"},
            {"id": "v3", "trackType": "background vocals", "extension": "wav"}]},
        {"stemName": "drums", "tracks": [{"id": "missing", "trackType": "kick drum", "extension": "wav"}]},
    ]
    for st in stems:
        (d / st["stemName"]).mkdir(parents=True)
        for i, tr in enumerate(st["tracks"]):
            if tr["id"] != "missing":
                sf.write(str(d / st["stemName"] / f"{tr['id']}.wav"), tone(200 + 10 * i, sr=44100), 44100)
    (d / "data.json").write_text(json.dumps({"song": "S", "artist": "A", "genre": "pop", "stems": stems}))
    (src / "bad").mkdir()
    (src / "bad" / "data.json").write_text("{oops")
    out = tmp_path / "out"
    rep = convert_moisesdb(src, out)
    assert rep["converted"] == 1 and len(rep["skipped"]) == 1
    (t,) = load_dataset(out)
    assert sorted(t.stems) == ["bass_bass_guitar", "vocals_background_vocals", "vocals_lead_female_singer"]
    lead = t.stems["vocals_lead_female_singer"]
    assert lead.label == "lead female singer" and lead.category == "vocals"
    # two takes summed: amplitude of two 200 Hz tones at 0.1 -> about 0.2
    x = lead.load()
    assert 0.17 < np.abs(x).max() < 0.21
    assert t.meta["unreadable"]  # the missing kick drum file is reported

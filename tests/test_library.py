import json

import numpy as np
import pytest
from test_pipeline_backend import MicroBackend, write_dataset

from engine.audio import load_audio, save_audio
from engine.frontend import LogMel
from engine.library import (LibraryError, Match, StemLibrary, build, category_from_label, find_stems,
                            label_from_filename, main, pool_tokens)


def random_lib(n=2000, d=32, stems=100, seed=0, cats=("bass", "drums", "vocals", "other")):
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n, d)).astype(np.float32)
    sid = [f"s{i % stems}" for i in range(n)]
    cat = [cats[(i % stems) % len(cats)] for i in range(n)]
    off = [4.0 * (i // stems) for i in range(n)]
    return StemLibrary.from_arrays(e, sid, categories=cat, offsets=off, track_ids=[f"t{(i % stems) // 3}" for i in range(n)],
                                   fingerprint="fp-a"), e, sid, cat, off


def brute(lib_e, q, k):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    e = lib_e / np.linalg.norm(lib_e, axis=1, keepdims=True)
    return np.argsort(-(q @ e.T), axis=1, kind="stable")[:, :k], q @ e.T


def test_search_exact_against_brute_force(rng):
    lib, e, sid, cat, off = random_lib()
    q = rng.standard_normal((5, 32)).astype(np.float32)
    res = lib.search(q, k=7, unique=None)
    top, sc = brute(e, q, 7)
    for i in range(5):
        assert [m.score for m in res[i]] == pytest.approx(sc[i, top[i]].tolist(), abs=1e-5)
        assert [(m.stem_id, m.offset) for m in res[i]] == [(sid[j], off[j]) for j in top[i]]


def test_search_unique_per_stem_and_categories(rng):
    lib, e, sid, cat, off = random_lib()
    q = rng.standard_normal((3, 32)).astype(np.float32)
    res = lib.search(q, k=10)
    _, sc = brute(e, q, 1)
    for i, r in enumerate(res):
        assert len(r) == 10 and len({m.stem_id for m in r}) == 10
        assert all(a.score >= b.score for a, b in zip(r, r[1:]))
        # each hit is that stem's best segment; and no stem outside the list beats the 10th
        for m in r:
            js = [j for j in range(len(sid)) if sid[j] == m.stem_id]
            assert m.score == pytest.approx(sc[i, js].max(), abs=1e-5)
        best_per_stem = {}
        for j in range(len(sid)):
            best_per_stem[sid[j]] = max(best_per_stem.get(sid[j], -9), sc[i, j])
        assert sorted(best_per_stem.values(), reverse=True)[9] == pytest.approx(r[-1].score, abs=1e-5)
    res = lib.search(q, k=5, categories=["drums", None, "nope"])
    assert len(res[0]) == 5 and all(m.category == "drums" for m in res[0])
    _, sc = brute(e, q[:1], 1)
    drums = [j for j in range(len(cat)) if cat[j] == "drums"]
    assert res[0][0].score == pytest.approx(sc[0, drums].max(), abs=1e-5)
    assert len(res[1]) == 5 and res[2] == []
    assert lib.search(q[:0], k=5) == []
    assert len(lib.search(q[0], k=3)) == 1  # (d,) accepted
    with pytest.raises(LibraryError):
        lib.search(np.ones((1, 31)), k=3)
    with pytest.raises(LibraryError):
        lib.search(np.full((1, 32), np.nan), k=3)
    assert lib.category_of("drums") == "drums" and lib.category_of("fretless bass") == "bass"
    assert lib.category_of("kazoo") == "other" and lib.category_of("warm synth pad") == "other"
    # a library without stems of a name's category: no restriction (searched whole), not no matches
    no_other, *_ = random_lib(cats=("bass", "drums"))
    assert no_other.category_of("kazoo") is None and no_other.category_of("lead vocal") is None
    assert no_other.category_of("bass") == "bass"


def test_k_larger_than_library_and_empty_library():
    lib = StemLibrary.from_arrays(np.eye(3, 4, dtype=np.float32), ["a", "a", "b"])
    r = lib.search(np.ones((1, 4)), k=10)[0]
    assert sorted(m.stem_id for m in r) == ["a", "b"]
    empty = StemLibrary.from_arrays(np.zeros((0, 4), np.float32), [])
    assert empty.search(np.ones((2, 4)), k=3) == [[], []]


def test_save_load_roundtrip_and_fingerprint(tmp_path, rng):
    lib, *_ = random_lib(n=300, stems=30)
    p = lib.save(tmp_path / "lib")
    assert p.name == "library.npz" and (tmp_path / "lib" / "library.json").is_file()
    back = StemLibrary.load(tmp_path / "lib", expect_fingerprint="fp-a")
    q = rng.standard_normal((4, 32)).astype(np.float32)
    assert back.search(q, 5) == lib.search(q, 5)
    assert back.stems == lib.stems and back.fingerprint == "fp-a"
    with pytest.raises(LibraryError, match="another model"):
        StemLibrary.load(p, expect_fingerprint="fp-b")
    with pytest.raises(LibraryError, match="no such"):
        StemLibrary.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(LibraryError, match="readable"):
        StemLibrary.load(tmp_path / "junk.npz")
    # no pickle anywhere: the file loads with allow_pickle=False (load() uses it)
    with np.load(p, allow_pickle=False) as z:
        assert json.loads(bytes(z["meta"]))["format"] == "stemjepa-library"


def test_labels_and_find_stems(tmp_path):
    assert label_from_filename("Electric_Bass-02.wav") == "electric bass"
    assert category_from_label("electric bass") == "bass"
    assert category_from_label("Kick drum") == "drums"
    assert category_from_label("lead vocals") == "vocals"
    assert category_from_label("violin") == "other"
    write_dataset(tmp_path / "ds", n_tracks=2, seconds=3.0)
    st = find_stems(tmp_path / "ds")
    assert [s.stem_id for s in st] == ["track0/bass", "track0/drums", "track0/keys", "track1/bass", "track1/drums",
                                       "track1/keys"]  # mixture.wav is not listed in track.json
    assert st[0].label == "electric bass" and st[0].category == "bass" and st[0].track_id == "track0"
    flat = tmp_path / "flat"
    flat.mkdir()
    save_audio(flat / "Fretless_Bass_1.wav", np.zeros(100, np.float32))
    (flat / "notes.txt").write_text("x")
    st = find_stems(flat)
    assert len(st) == 1 and st[0].label == "fretless bass" and st[0].track_id == "Fretless_Bass_1"


@pytest.fixture(scope="module")
def backend():
    return MicroBackend(seed=0)


@pytest.mark.slow
def test_build_resume_bad_files_and_self_retrieval(tmp_path, backend):
    ds = write_dataset(tmp_path / "ds", n_tracks=3, seconds=12.0)
    # a silent stem, a corrupt file
    save_audio(ds / "track0" / "silence.wav", np.zeros(16000 * 10, np.float32))
    (ds / "track1" / "broken.wav").write_bytes(b"RIFF....garbage")
    for t, extra in (("track0", "silence"), ("track1", "broken")):
        meta = json.loads((ds / t / "track.json").read_text())
        meta["stems"][extra] = {"label": extra, "category": "other"}
        (ds / t / "track.json").write_text(json.dumps(meta))
    logs = []
    lib = build(ds, backend, tmp_path / "idx", hop_s=4.0, progress=False, log=logs.append)
    assert lib.n_stems == 9 and lib.n_tracks == 3  # silence has no active segment, broken failed
    assert len(lib) == 9 * 2  # 12 s -> segments at 0 and 4 s
    assert sorted(set(lib.seg_offset.tolist())) == [0.0, 4.0]
    assert [f["stem_id"] for f in lib.info["failed"]] == ["track1/broken"]
    assert lib.info["empty"] == ["track0/silence"]
    assert any("broken.wav" in m for m in logs)
    assert lib.fingerprint == backend.manifest.fingerprint
    assert np.allclose(np.linalg.norm(lib.embeddings, axis=1), 1.0, atol=1e-5)

    # self-retrieval: a stem's own segment, embedded the same way, is its top-1 at its offset
    x = load_audio(ds / "track2" / "drums.wav")
    lm = LogMel()(np.concatenate([x, np.zeros(240, np.float32)]))[:, 400:1200][None]
    q = pool_tokens(backend.encode_target(lm))
    m = lib.search(q, k=3, unique=None)[0][0]
    assert (m.stem_id, m.offset, m.label, m.category) == ("track2/drums", 4.0, "drum kit", "drums")
    assert m.score == pytest.approx(1.0, abs=1e-4)

    # resume: a new stem is added; only it is indexed
    save_audio(ds / "track2" / "extra.wav", 0.1 * np.random.default_rng(0).standard_normal(16000 * 9).astype(np.float32))
    meta = json.loads((ds / "track2" / "track.json").read_text())
    meta["stems"]["extra"] = {"label": "shaker", "category": "drums"}
    (ds / "track2" / "track.json").write_text(json.dumps(meta))
    calls = []
    orig = backend.encode_target
    backend.encode_target = lambda x: calls.append(x.shape) or orig(x)
    try:
        lib2 = build(ds, backend, tmp_path / "idx", hop_s=4.0, progress=False, log=logs.append)
    finally:
        del backend.encode_target
    assert calls == [(1, 80, 800)]  # the new 9-s stem: one segment; the broken file fails again
    assert lib2.n_stems == 10 and len(lib2) == 19
    assert np.array_equal(lib2.search(q, 3)[0][0].stem_id, "track2/drums")
    loaded = StemLibrary.load(tmp_path / "idx", expect_fingerprint=backend.manifest.fingerprint)
    assert len(loaded) == 19
    # another model refuses to resume into it, and cannot load it
    other = MicroBackend(seed=1)
    with pytest.raises(LibraryError):
        build(ds, other, tmp_path / "idx", progress=False, log=logs.append)
    with pytest.raises(LibraryError, match="another model"):
        StemLibrary.load(tmp_path / "idx", expect_fingerprint=other.manifest.fingerprint)


def test_short_stems_and_plain_folder(tmp_path, backend):
    d = tmp_path / "loops"
    d.mkdir()
    rng = np.random.default_rng(0)
    save_audio(d / "shaker_loop.wav", 0.2 * rng.standard_normal(16000 * 3).astype(np.float32))  # 3 s
    save_audio(d / "tiny.wav", 0.2 * rng.standard_normal(8000).astype(np.float32))  # 0.5 s: too short
    lib = build(d, backend, tmp_path / "loops.npz", progress=False, log=lambda m: None)
    assert [s["stem_id"] for s in lib.stems] == ["shaker_loop"]
    assert lib.stems[0]["category"] == "drums" and len(lib) == 1
    assert lib.info["empty"] == ["tiny"]


def test_cli_info(tmp_path, capsys):
    lib, *_ = random_lib(n=100, stems=10)
    lib.save(tmp_path / "x.npz")
    assert main(["info", str(tmp_path / "x.npz")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["segments"] == 100 and out["stems"] == 10
    assert main(["info", str(tmp_path / "nothing.npz")]) == 2


def test_match_is_plain_data():
    m = Match("a", "t", "bass", "bass", 4.0, 0.5)
    assert json.loads(json.dumps(m.to_dict()))["offset"] == 4.0


def test_one_category_vocabulary_for_library_conditioning_and_training():
    """engine.categories is the one table: the library's labels, the 4-class conditioning and
    training's classes agree on every name, and names are matched by word, not by substring."""
    from engine.categories import CATEGORIES, category_of
    from engine.library import category_from_label
    from training.config import CLASSES, class_index

    assert tuple(CLASSES) == CATEGORIES
    expect = {"tom": "drums", "floor toms": "drums", "shaker": "drums", "tambourine": "drums", "cajon": "drums",
              "Hi-Hat_02": "drums", "hihat": "drums", "kick drum": "drums", "fretless bass": "bass",
              "synthbass": "bass", "double bass": "bass", "lead vocals": "vocals", "choir": "vocals",
              "custom pad": "other", "bassoon": "other", "upbeat piano": "other", "atmosphere": "other",
              "warm synth pad": "other", "stomp box guitar": "other", "chromatic percussion": "other",
              "vibraphone": "other"}
    for name, cat in expect.items():
        assert category_of(name) == cat, name
        assert category_from_label(name) == cat, name
        assert CATEGORIES[class_index(cat)] == cat
    assert class_index("not a category") == CATEGORIES.index("other")


@pytest.mark.slow
def test_build_stores_key_tempo_descriptors_and_adds_them_to_an_older_index(tmp_path, backend):
    from engine import keytempo
    from engine.library import add_keytempo

    ds = write_dataset(tmp_path / "ds", n_tracks=2, seconds=12.0)
    lib = build(ds, backend, tmp_path / "idx", hop_s=4.0, progress=False, log=lambda m: None)
    assert lib.keytempo is not None and lib.keytempo.shape == (len(lib), keytempo.DIM)
    i = int(np.flatnonzero(lib.seg_offset == 4.0)[0])
    x = load_audio(ds / f"{lib.stems[lib.seg_stem[i]]['stem_id']}.wav")
    assert np.allclose(lib.keytempo[i], keytempo.describe(x[4 * 16000:12 * 16000]), atol=1e-6)
    built = lib.keytempo.copy()
    lib.keytempo = None  # an index from before the descriptors
    lib.save(tmp_path / "idx")
    assert StemLibrary.load(tmp_path / "idx").keytempo is None
    again = add_keytempo(StemLibrary.load(tmp_path / "idx"), log=lambda m: None)
    assert np.allclose(again.keytempo, built, atol=1e-6)
    assert np.allclose(StemLibrary.load(tmp_path / "idx").keytempo, built, atol=1e-6)
    lib.save(tmp_path / "idx")  # a resumed build fills them in too
    logs = []
    resumed = build(ds, backend, tmp_path / "idx", hop_s=4.0, progress=False, log=logs.append)
    assert np.allclose(resumed.keytempo, built, atol=1e-6) and any("key/tempo" in m for m in logs)


def test_coarse_category_restriction_over_fine_categories(rng):
    """A library labelled by GM family: "warm pad" (coarse other) searches every family that is
    not bass, drums or vocals; a family's own name searches only it; "fretless bass" the bass."""
    fams = ("bass", "drums", "piano", "reed", "synth lead", "chromatic percussion", "ensemble")
    lib, e, sid, cat, off = random_lib(n=1400, stems=70, cats=fams)
    assert lib.category_of("warm pad") == "other" and lib.category_of("fretless bass") == "bass"
    assert lib.category_of("reed") == "reed" and lib.category_of("lead vocals") is None
    q = rng.standard_normal((3, 32)).astype(np.float32)
    res = lib.search(q, k=30, categories=["other", "reed", "bass"])
    others = {"piano", "reed", "synth lead", "chromatic percussion", "ensemble"}
    assert len(res[0]) == 30 and {m.category for m in res[0]} <= others and len({m.category for m in res[0]}) > 2
    assert all(m.category == "reed" for m in res[1]) and len(res[1]) == 10  # 10 reed stems
    assert all(m.category == "bass" for m in res[2])
    # the restricted top-1 is the best of the coarse category's segments (brute force)
    _, sc = brute(e, q[:1], 1)
    best = max(sc[0, j] for j in range(len(cat)) if cat[j] in others)
    assert res[0][0].score == pytest.approx(best, abs=1e-5)
    assert sorted(lib.categories) == sorted(fams)  # the library's own categories, not the coarse ones

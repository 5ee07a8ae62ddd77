"""The tempo + key descriptor as the engine uses it: the streaming descriptor equals itself however
the audio arrives, follows the offline one, and the fused library ranking puts the stem in the
same key and pulse first where the model cannot tell."""
import numpy as np
import pytest

from engine import keytempo as kt
from engine.library import LibraryError, StemLibrary

SR = 16000


def tone_bursts(seconds: float, hz: float, bpm: float, seed: int = 0) -> np.ndarray:
    """A pitched note struck on every beat: key ``hz``, tempo ``bpm``, with a little noise."""
    t = np.arange(int(seconds * SR)) / SR
    phase = (t * bpm / 60.0) % 1.0
    env = np.exp(-phase * 8.0)
    x = env * (np.sin(2 * np.pi * hz * t) + 0.5 * np.sin(2 * np.pi * 1.5 * hz * t))
    return (x + 0.01 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


@pytest.mark.slow
def test_stream_is_the_same_whole_in_chunks_and_nearly_sample_by_sample():
    x = tone_bursts(12.0, 220.0, 100.0)
    whole = kt.KeyTempoStream()
    whole.push(x)
    ref = whole.describe()
    for chunk in (2560, 997):
        s = kt.KeyTempoStream()
        for i in range(0, len(x), chunk):
            s.push(x[i:i + chunk])
        assert np.array_equal(s.describe(), ref), chunk
    s = kt.KeyTempoStream()  # the first 3 s one sample at a time, the rest in blocks
    for i in range(3 * SR):
        s.push(x[i:i + 1])
    s.push(x[3 * SR:])
    assert np.array_equal(s.describe(), ref)
    assert ref.shape == (kt.DIM,) and abs(float(np.linalg.norm(ref)) - 1.0) < 1e-5


def test_stream_follows_the_offline_descriptor_of_the_same_window():
    x = tone_bursts(10.0, 330.0, 120.0, seed=1)
    s = kt.KeyTempoStream(8.0)
    s.push(x)
    assert float(s.describe() @ kt.describe(x[-8 * SR:])) > 0.999
    s.reset()
    assert not s.describe().any()  # nothing pushed: a zero descriptor, not a guess


def test_reset_at_a_position_keeps_the_frame_grid():
    x = tone_bursts(14.0, 262.0, 90.0, seed=2)
    cont = kt.KeyTempoStream()
    cont.push(x)
    at = 3 * SR + 777  # off every grid
    late = kt.KeyTempoStream()
    late.reset(at)
    late.push(x[at:])
    assert late.position == cont.position == len(x)
    assert np.array_equal(late.describe(), cont.describe())  # the window starts after `at`


def test_descriptor_separates_keys_and_tempi():
    a = kt.describe(tone_bursts(8.0, 220.0, 100.0))
    same = kt.describe(tone_bursts(8.0, 220.0, 100.0, seed=5))
    other_key = kt.describe(tone_bursts(8.0, 311.1, 100.0))
    other_tempo = kt.describe(tone_bursts(8.0, 220.0, 137.0))
    assert a @ same > a @ other_key and a @ same > a @ other_tempo


def test_fuse_gives_the_weighted_sum_of_cosines():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((5, 16))
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    h = rng.standard_normal((5, kt.DIM))
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    f = kt.fuse(m, h, 0.3)
    assert np.allclose(f @ f.T, 0.7 * (m @ m.T) + 0.3 * (h @ h.T), atol=1e-5)
    with pytest.raises(ValueError):
        kt.fuse(m, h, 1.5)


def _library(keytempo: bool):
    """Two candidate stems the model scores alike; only their key and tempo differ."""
    e = np.ones((2, 8), np.float32)
    desc = np.stack([kt.describe(tone_bursts(8.0, 220.0, 100.0, seed=7)),
                     kt.describe(tone_bursts(8.0, 311.1, 137.0, seed=8))])
    return StemLibrary.from_arrays(e, ["fits/bass", "other/bass"], labels=["bass", "bass"],
                                   keytempo=desc if keytempo else None)


def test_fused_search_prefers_the_stem_in_the_same_key_and_pulse(tmp_path):
    lib = _library(True)
    live = kt.describe(tone_bursts(8.0, 220.0, 100.0, seed=9))
    q = np.ones((1, 8), np.float32)
    fused = lib.search(q, k=2, keytempo=live, keytempo_weight=0.5)[0]
    assert [m.stem_id for m in fused] == ["fits/bass", "other/bass"]
    assert fused[0].score > fused[1].score
    model_only = lib.search(q, k=2, keytempo=live, keytempo_weight=0.0)[0]
    assert model_only[0].score == pytest.approx(model_only[1].score)
    with pytest.raises(ValueError):
        lib.search(q, k=2, keytempo=live, keytempo_weight=-0.1)
    with pytest.raises(LibraryError):
        lib.search(q, k=2, keytempo=np.full(kt.DIM, np.nan), keytempo_weight=0.5)
    back = StemLibrary.load(lib.save(tmp_path / "lib"))  # the descriptors travel with the index
    assert np.array_equal(back.keytempo, lib.keytempo) and back.summary()["keytempo"]


def test_index_without_descriptors_ranks_by_the_model_and_can_get_them(tmp_path):
    old = _library(False)
    p = old.save(tmp_path / "old")
    back = StemLibrary.load(p)
    assert back.keytempo is None and not back.summary()["keytempo"]
    live = kt.describe(tone_bursts(8.0, 220.0, 100.0))
    r = back.search(np.ones((1, 8), np.float32), k=2, keytempo=live, keytempo_weight=0.5)[0]
    assert r[0].score == pytest.approx(r[1].score)  # no descriptors: the model alone
    with pytest.raises(LibraryError):
        StemLibrary(np.ones((2, 8)), [0, 0], [0.0, 4.0], [{"stem_id": "a", "track_id": "a", "label": "bass",
                                                          "category": "bass", "path": ""}],
                    keytempo=np.zeros((3, kt.DIM)))

import numpy as np
import pytest

from engine.text import CachedText, ClapText, MiniLMText, TextEncoderError, normalise_name


@pytest.fixture(scope="module")
def minilm():
    return MiniLMText()


def test_minilm_offline_semantics(minilm):
    v = minilm.encode(["electric bass", "bass guitar", "drums", "kick drum", "violin"])
    assert v.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 4] and sim[2, 3] > sim[2, 4]


def test_cache_normalises_and_encodes_once(minilm):
    calls = []

    class Counting:
        name, dim = minilm.name, minilm.dim

        def encode(self, texts):
            calls.append(list(texts))
            return minilm.encode(texts)

    c = CachedText(Counting())
    a = c.encode(["Warm  Synth Pad", "drums"])
    b = c.encode(["warm synth pad", " DRUMS "])
    assert np.array_equal(a, b)
    assert sum(len(x) for x in calls) == 2
    with pytest.raises(TextEncoderError, match="empty"):
        c.encode(["   "])


def test_normalise_rejects_non_strings():
    with pytest.raises(TextEncoderError):
        normalise_name(3)


def test_clap_requires_user_files(tmp_path):
    with pytest.raises(TextEncoderError, match="missing"):
        ClapText(tmp_path / "clap.pt", tmp_path / "tok")
    (tmp_path / "clap.pt").write_bytes(b"x")
    (tmp_path / "tok").mkdir()
    with pytest.raises(TextEncoderError, match="tokenizer"):
        ClapText(tmp_path / "clap.pt", tmp_path / "tok")

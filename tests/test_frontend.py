import numpy as np
import pytest
import soundfile as sf

from engine.audio import AudioError, load_audio, resample
from engine.frontend import FrontEndConfig, LogMel, StreamingLogMel, mel_filterbank
from tests.conftest import tone_mix


def test_shapes_and_frame_count():
    cfg = FrontEndConfig()
    x = tone_mix(seconds=8.0)
    m = LogMel(cfg)(x)
    assert m.shape == (80, cfg.n_frames(len(x)))
    assert m.dtype == np.float32
    assert cfg.n_frames(cfg.n_samples(800)) == 800


def test_filterbank_covers_band():
    cfg = FrontEndConfig()
    fb = mel_filterbank(cfg)
    freqs = np.linspace(0, 8000, fb.shape[0])
    assert fb.shape == (201, 80)
    assert np.all(fb[freqs < cfg.f_min] == 0)
    assert np.all(fb.max(axis=0) > 0.1)  # no empty filter (low filters are narrower than a bin)


@pytest.mark.parametrize("mode", ["random_chunks", "sample_by_sample", "one_chunk"])
def test_streaming_equals_offline(mode, rng):
    x = tone_mix(seconds=1.5, seed=3)
    offline = LogMel()(x)
    s = StreamingLogMel()
    outs = []
    if mode == "random_chunks":
        i = 0
        while i < len(x):
            n = int(rng.integers(1, 2500))
            outs.append(s.push(x[i:i + n]))
            i += n
    elif mode == "sample_by_sample":
        outs = [s.push(x[i:i + 1]) for i in range(len(x))]
    else:
        outs = [s.push(x)]
    got = np.concatenate(outs, axis=1)
    assert got.shape == offline.shape
    assert np.array_equal(got, offline)
    s.reset()
    assert s.push(x[:100]).shape[1] == 0 and s.frames_emitted == 0


def test_frame_emitted_as_soon_as_complete():
    s = StreamingLogMel()
    assert s.push(np.zeros(399)).shape[1] == 0
    assert s.push(np.zeros(1)).shape[1] == 1
    assert s.push(np.zeros(159)).shape[1] == 0
    assert s.push(np.zeros(1)).shape[1] == 1


def test_torch_twin_matches():
    torch = pytest.importorskip("torch")
    from training.features import TorchLogMel

    x = tone_mix(seconds=2.0, seed=5)
    a = LogMel()(x)
    b = TorchLogMel()(torch.from_numpy(x)[None])[0].numpy()
    assert b.shape == a.shape
    np.testing.assert_allclose(b, a, atol=2e-4, rtol=0)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_preserves_tone(sr):
    t = np.arange(sr) / sr
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    y = resample(x, sr, 16000)
    assert abs(len(y) - 16000) <= 1
    spec = np.abs(np.fft.rfft(y[2000:14000] * np.hanning(12000)))
    peak_hz = np.argmax(spec) * 16000 / 12000
    assert abs(peak_hz - 440) < 3


def test_load_audio_stereo_and_rate(tmp_path):
    sr = 44100
    x = np.stack([np.ones(sr) * 0.5, np.zeros(sr)], axis=1).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, sr)
    y = load_audio(tmp_path / "a.wav")
    assert abs(len(y) - 16000) <= 1
    assert np.allclose(y[1000:-1000], 0.25, atol=1e-3)


def test_load_audio_errors(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEjunkjunk")
    with pytest.raises(AudioError, match="cannot read"):
        load_audio(tmp_path / "bad.wav")
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    x = np.zeros(1600, dtype=np.float32)
    x[10] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite"):
        load_audio(tmp_path / "nan.wav")

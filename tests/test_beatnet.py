"""The causal beat and downbeat network: the engine's numpy forward (whole, in chunks, frame by
frame), its torch twin, the weights file, the training examples and loop (exact resume), and the
beat evaluation's decoders."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.beatnet import BeatActivations, BeatNet, BeatNetArch, BeatNetError, find_beatnet

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def random_arrays(arch: BeatNetArch, seed: int = 0) -> dict:
    """Weights of ``arch`` under the torch state_dict names, drawn at a scale that keeps it lively."""
    rng = np.random.default_rng(seed)
    c = arch.channels

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    a = {"norm_mean": rng.normal(-5, 1, arch.n_mels).astype(np.float32),
         "norm_std": rng.uniform(2, 4, arch.n_mels).astype(np.float32),
         "front.weight": w(c, arch.in_channels, arch.front_kernel), "front.bias": w(c, 1)[:, 0],
         "head.weight": w(arch.n_outputs, c, 1), "head.bias": np.zeros(arch.n_outputs, np.float32)}
    for i, _ in enumerate(arch.dilations):
        a[f"blocks.{i}.conv.weight"] = w(c, c, arch.kernel)
        a[f"blocks.{i}.conv.bias"] = w(c, 1)[:, 0]
        a[f"blocks.{i}.mix.weight"] = w(c, c, 1)
        a[f"blocks.{i}.mix.bias"] = w(c, 1)[:, 0]
    return a


@pytest.fixture
def net(tmp_path):
    arch = BeatNetArch()
    p = tmp_path / "beatnet.npz"
    BeatNet.save(p, random_arrays(arch), {"arch": arch.to_dict(), "frontend": {}})
    return BeatNet.load(p)


def logmel(seconds=6.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((80, int(seconds * 100) + 1)) * 3 - 5).astype(np.float32)


def pushed(net, x, sizes):
    s = net.stream()
    parts, i = [], 0
    for n in sizes:
        parts.append(s.push(x[:, i:i + n]))
        i += n
    assert i >= x.shape[1]
    return BeatActivations.concat(parts)


def test_whole_chunks_and_frame_by_frame_agree(net):
    x = logmel()
    whole = net.offline(x)
    assert len(whole) == x.shape[1] // 2 and whole.fps == 50.0 and whole.t0 == pytest.approx(0.0175)
    assert 0.01 < whole.beat.std() and np.all((whole.beat >= 0) & (whole.beat <= 1))
    rng = np.random.default_rng(3)
    chunks = pushed(net, x, list(rng.integers(0, 37, size=200)) + [x.shape[1]])
    frames = pushed(net, x, [1] * x.shape[1])
    for got in (chunks, frames):
        assert len(got) == len(whole)
        assert np.abs(got.beat - whole.beat).max() < 1e-5
        assert np.abs(got.downbeat - whole.downbeat).max() < 1e-5
        assert got.t0 == whole.t0


def test_stream_times_reset_and_audio(net):
    s = net.stream(time_offset=2.0)
    a = s.push(logmel()[:, :33])  # 16 frames complete, one waits for its partner
    assert len(a) == 16 and s.frames_in == 33
    b = s.push(logmel()[:, 33:35])
    assert len(b) == 1 and b.t0 == pytest.approx(2.0 + 0.0175 + 16 / 50)
    s.reset()
    assert s.frames_out == 0 and len(s.push(np.zeros((80, 1), np.float32))) == 0
    x = np.random.default_rng(0).standard_normal(SR * 2).astype(np.float32) * 0.1
    assert len(net.from_audio(x)) == (1 + (len(x) - 400) // 160) // 2
    with pytest.raises(ValueError):
        s.push(np.zeros((40, 4), np.float32))


def test_causal(net):
    x = logmel()
    y = x.copy()
    y[:, 301:] = np.random.default_rng(9).standard_normal((80, x.shape[1] - 301)) * 3 - 5
    a, b = net.offline(x), net.offline(y)
    assert np.array_equal(a.beat[:150], b.beat[:150]) and not np.allclose(a.beat[151:], b.beat[151:])


def test_weights_file_errors(tmp_path, net):
    bad = tmp_path / "bad.npz"
    np.savez(bad, meta=np.array(json.dumps({"format": "other", "version": 1})))
    with pytest.raises(BeatNetError, match="format"):
        BeatNet.load(bad)
    arch = BeatNetArch(channels=16)
    arrays = random_arrays(BeatNetArch())
    with pytest.raises(BeatNetError, match="architecture"):
        BeatNet(arrays, {"format": "stemjepa-beatnet", "version": 1, "arch": arch.to_dict()})
    with pytest.raises(BeatNetError, match="readable"):
        BeatNet.load(tmp_path / "missing.npz")


def test_find_beatnet(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "manifest.json").write_text(json.dumps({"files": {"beatnet": {"path": "beatnet.npz", "sha256": "x"}}}))
    assert find_beatnet(full) == full / "beatnet.npz"
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "packed.json").write_text(json.dumps({"files": {"beatnet.npz": {"path": "beatnet.npz"}}}))
    assert find_beatnet(packed) == packed / "beatnet.npz"
    (packed / "packed.json").write_text(json.dumps({"files": {}}))
    assert find_beatnet(packed) is None and find_beatnet(tmp_path) is None


def test_engine_module_needs_no_torch():
    code = ("import numpy as np, engine.beatnet as b, sys; a = b.BeatNetArch(); "
            "assert 'torch' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "hide_modules.py"), "torch", "-c", code],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_arch_counts():
    a = BeatNetArch()
    assert a.receptive_field() == 256  # 5.1 s at 50 Hz
    assert 30_000 < a.n_params() < 120_000


# ---------------------------------------------------------------------------------------------- torch twin
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("tempo_bins", [0, 12])
def test_numpy_forward_equals_torch(tmp_path, tempo_bins):
    from training.beatnet import BeatNetTorch

    torch.manual_seed(0)
    m = BeatNetTorch(BeatNetArch(tempo_bins=tempo_bins)).eval()
    m.norm_mean.copy_(torch.randn(80) - 5)
    m.norm_std.copy_(torch.rand(80) + 2)
    x = logmel(8.0, seed=4)
    with torch.no_grad():
        logits = m(torch.from_numpy(x)[None])[0]
        ref = torch.sigmoid(logits[:2]).numpy()
        ref_tempo = torch.softmax(logits[2:], dim=0).numpy().T  # (T, K)
    n = BeatNet(m.numpy_arrays(), {"format": "stemjepa-beatnet", "version": 1, "arch": m.arch.to_dict()})
    got = n.offline(x)
    assert ref.shape == (2, x.shape[1] // 2)
    assert np.abs(ref[0] - got.beat).max() < 1e-5 and np.abs(ref[1] - got.downbeat).max() < 1e-5
    streamed = pushed(n, x, [5] * 200)
    assert np.abs(ref[0] - streamed.beat).max() < 1e-5
    if not tempo_bins:
        assert got.tempo is None and streamed.tempo is None
        return
    assert got.tempo.shape == (x.shape[1] // 2, tempo_bins) and np.abs(ref_tempo - got.tempo).max() < 1e-5
    assert np.abs(ref_tempo - streamed.tempo).max() < 1e-5
    np.testing.assert_allclose(got.tempo.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got.tempo_bpm, m.arch.tempo_bpm())
    assert got.tempo_bpm[0] == pytest.approx(50.0) and got.tempo_bpm[-1] == pytest.approx(240.0)
    # a file of an older network (no tempo output) is read by this code, and the tempo arch round-trips
    assert BeatNetArch.from_dict(m.arch.to_dict()) == m.arch
    assert "tempo_bins" not in BeatNetArch().to_dict()


def test_checkpoint_export_round_trip(tmp_path):
    from training.beatnet import BeatNetTorch, export_weights, load_checkpoint, save_checkpoint

    torch.manual_seed(1)
    m = BeatNetTorch(BeatNetArch(channels=16, dilations=(1, 2, 4)))
    save_checkpoint(tmp_path / "c.pt", m, step=7, elapsed_s=1.0, train_config={"data": "d", "split": "train"})
    m2, st = load_checkpoint(tmp_path / "c.pt")
    assert st["step"] == 7 and m2.arch == m.arch
    out = export_weights(tmp_path / "c.pt", tmp_path / "w.npz")
    n = BeatNet.load(out)
    assert n.arch == m.arch and n.meta["train"]["step"] == 7 and n.meta["params"] == sum(p.numel() for p in m.parameters())
    x = logmel(3.0)
    with torch.no_grad():
        ref = torch.sigmoid(m2(torch.from_numpy(x)[None]))[0, 0].numpy()
    assert np.abs(n.offline(x).beat - ref).max() < 1e-5
    assert out.stat().st_size < 400_000


# ---------------------------------------------------------------------------------------------- training data
def click_dataset(root: Path, n_tracks=3, seconds=12.0, bpm=120.0):
    """Tracks of a kick on every beat (louder on the downbeat, 4/4) and a held tone, with beats and downbeats."""
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    ids = []
    for k in range(n_tracks):
        tid = f"t{k}"
        ids.append(tid)
        (root / tid).mkdir(exist_ok=True)
        n = int(seconds * SR)
        period = 60.0 / (bpm + 10 * k)
        beats = np.arange(0.25, seconds - 0.1, period)
        kick = np.zeros(n, np.float32)
        for j, b in enumerate(beats):
            i = int(b * SR)
            ln = min(n - i, 1600)
            kick[i:i + ln] += (0.6 if j % 4 == 0 else 0.3) * np.exp(-np.arange(ln) / 300.0) * np.sin(
                2 * np.pi * 70 * np.arange(ln) / SR)
        tone = (0.05 * np.sin(2 * np.pi * 330 * np.arange(n) / SR)).astype(np.float32)
        sf.write(root / tid / "drums.wav", kick, SR, subtype="PCM_16")
        sf.write(root / tid / "pad.wav", tone, SR, subtype="PCM_16")
        doc = {"stems": {"drums": {"label": "drums", "category": "drums"}, "pad": {"label": "pad", "category": "synth"}},
               "beats": [round(float(b), 4) for b in beats], "downbeats": [round(float(b), 4) for b in beats[::4]]}
        (root / tid / "track.json").write_text(json.dumps(doc))
    (root / "splits.json").write_text(json.dumps({"train": ids[:-1], "validation": ids[-1:]}))
    return root


@pytest.fixture(scope="module")
def clicks(tmp_path_factory):
    return click_dataset(tmp_path_factory.mktemp("clicks"))


def test_examples_targets_and_negatives(clicks):
    from training.beatnet import NEGATIVE_KINDS, BeatExamples, BeatNetConfig, negative_example
    from training.data.sampler import StemSampler

    cfg = BeatNetConfig(p_negative=0.0, p_gap=0.0, p_noise=0.0, p_stem_drop=0.0, gain_min_db=0, gain_max_db=0)
    s = StemSampler(clicks, split="train", seconds=4.0)
    ex = BeatExamples(s, cfg)
    rng = np.random.default_rng(0)
    x, y, mask = ex.example(rng)
    assert x.shape == (s.S,) and y.shape == (5, ex.n_act) and mask == 1.0
    assert y[0].max() == 1.0 and (y[1] == 1.0).sum() < (y[0] == 1.0).sum()
    # hard negatives: the half-beat points lie between the beats, never on one; the non-downbeat
    # beats are beats, never downbeats
    beat_frames, half = np.flatnonzero(y[0] == 1.0), np.flatnonzero(y[2] == 1.0)
    assert len(half) >= len(beat_frames) - 1 and not (y[2] * y[0]).any()
    gaps = np.diff(beat_frames)
    mids = beat_frames[:-1] + gaps / 2
    assert np.abs(half[:, None] - mids[None, :]).min(1).max() <= cfg.widen + 0.5
    assert (y[3] == 1.0).any() and not (y[3] * y[1]).any()
    assert (y[0][y[3] == 1.0] > 0).all()
    # the local tempo: the tracks' own (120, 130 or 140 BPM) on every frame of the crop (a kick
    # every beat from the track's start to its end, so the crop is all within a period of one)
    assert set(np.unique(np.round(y[4]))) <= {120.0, 130.0, 140.0} and len(np.unique(np.round(y[4]))) == 1
    # the target frames sit on the kicks: the mix is loud there
    frames = np.flatnonzero(y[0] == 1.0)
    env = np.array([np.abs(x[int((f / 50 + 0.0175) * SR):int((f / 50 + 0.0175) * SR) + 320]).max() for f in frames])
    assert env.min() > 0.1
    for kind in NEGATIVE_KINDS:
        a = negative_example(np.random.default_rng(1), 8000, kind=kind)
        assert a.shape == (8000,) and np.all(np.isfinite(a)) and np.abs(a).max() < 1.0
    neg = BeatExamples(s, BeatNetConfig(p_negative=1.0))
    x, y, _ = neg.example(rng)
    assert not y.any()
    b = ex.batch(np.random.default_rng(2), 3)
    assert b["audio"].shape == (3, s.S) and b["targets"].shape == (3, 5, ex.n_act)


def test_local_tempo_and_the_tempo_loss():
    """The tempo target is the period around each frame, 0 away from the beats; the tempo loss
    is lowest for logits peaked on the target's class, counts the frames near it as hits, and
    ignores frames without a target."""
    import torch

    from engine.beatnet import BeatNetArch
    from training.beatnet import local_tempo, tempo_loss

    beats = np.array([1.0, 1.5, 2.0, 3.0])  # 120, 120, then 60 BPM
    t = np.array([0.0, 0.6, 1.2, 1.7, 2.5, 3.5, 4.1])
    np.testing.assert_allclose(local_tempo(beats, t), [0.0, 120.0, 120.0, 120.0, 60.0, 60.0, 0.0])
    assert not local_tempo(beats[:1], t).any()
    arch = BeatNetArch(tempo_bins=24)
    k = int(np.argmin(np.abs(arch.tempo_bpm() - 100.0)))
    bpm = torch.tensor([[100.0, 100.0, 0.0]])
    peaked = torch.full((1, 24, 3), -5.0)
    peaked[0, k] = 5.0
    wrong = torch.full((1, 24, 3), -5.0)
    wrong[0, (k + 10) % 24] = 5.0
    lp, acc_p = tempo_loss(peaked, bpm, arch, sigma=1.0)
    lw, acc_w = tempo_loss(wrong, bpm, arch, sigma=1.0)
    assert float(lp) < float(lw) and float(acc_p) == 1.0 and float(acc_w) == 0.0
    other = peaked.clone()
    other[0, :, 2] = torch.randn(24) * 10  # the frame without a target does not count
    assert float(tempo_loss(other, bpm, arch, 1.0)[0]) == pytest.approx(float(lp))
    z, _ = tempo_loss(peaked, torch.zeros(1, 3), arch, 1.0)
    assert float(z) == 0.0


def test_pooled_sampler_draws_every_root_by_its_track_count(clicks, tmp_path):
    """data=A,B: one pool of tracks. A root of 4 training tracks beside one of 2 gives two crops in
    three from the first; one root alone gives the very crops of its own sampler; a root without
    beats adds nothing to the pool, and crop lengths must agree."""
    from training.beatnet import data_roots
    from training.data.layout import DatasetError
    from training.data.sampler import PooledBeatSampler, StemSampler

    other = click_dataset(tmp_path / "other", n_tracks=5, bpm=50.0)  # 4 train tracks at 50-80 BPM
    a, b = StemSampler(other, split="train", seconds=3.0), StemSampler(clicks, split="train", seconds=3.0)
    pool = PooledBeatSampler([a, b])
    assert len(pool) == 6 and pool.S == a.S
    rng = np.random.default_rng(0)
    fast = sum(60.0 / np.median(np.diff(pool.sample_beats(rng)["beats"])) < 100 for _ in range(600))
    assert abs(fast / 600 - 4 / 6) < 0.06, fast  # the slow root: 4 of the 6 tracks (the other 120-130 BPM)
    alone = PooledBeatSampler([b])
    x, y = alone.sample_beats(np.random.default_rng(3)), b.sample_beats(np.random.default_rng(3))
    assert np.array_equal(x["mix"], y["mix"]) and x["offset"] == y["offset"]
    with pytest.raises(ValueError, match="crop lengths"):
        PooledBeatSampler([a, StemSampler(clicks, split="train", seconds=4.0)])
    with pytest.raises(DatasetError):
        PooledBeatSampler([])
    assert data_roots(f" {other}, {clicks} ") == [str(other), str(clicks)]


def test_config_refuses_unknown_and_bad_values():
    from engine.cli import CliError
    from training.beatnet import load_config

    assert load_config(None, ["steps=5", "flux=false", "dilations=1,2"]).arch().dilations == (1, 2)
    with pytest.raises(CliError, match="unknown"):
        load_config(None, ["nope=1"])
    with pytest.raises(CliError, match="steps"):
        load_config(None, ["steps=abc"])


@pytest.mark.slow
def test_fit_resumes_exactly_and_exports(clicks, tmp_path):
    from training.beatnet import export_weights, fit, load_config

    keys = [f"data={clicks}", "steps=6", "batch_size=2", "seconds=3", "channels=8", "dilations=1,2,4",
            "norm_samples=2", "ckpt_every=3", "val_every=3", "val_batches=1", "warmup=2"]
    whole = fit(load_config(None, keys + [f"out={tmp_path / 'a'}"]), log=lambda m: None)
    fit(load_config(None, keys + [f"out={tmp_path / 'b'}", "stop_after=3"]), log=lambda m: None)
    assert not (tmp_path / "b" / "final.pt").exists()
    resumed = fit(load_config(None, keys + [f"out={tmp_path / 'b'}"]), log=lambda m: None)
    a = torch.load(whole, weights_only=False)["model"]
    b = torch.load(resumed, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(6)) and "val_beat" in log[2]
    assert any((tmp_path / "a" / "tb").iterdir())
    n = BeatNet.load(export_weights(whole, tmp_path / "w.npz"))
    assert n.meta["train"]["step"] == 6
    # two roots (data=A,B): trains on their pool, validates on both validation splits
    two = click_dataset(tmp_path / "slow", n_tracks=3, bpm=60.0)
    pooled = fit(load_config(None, keys + [f"data={clicks},{two}", f"out={tmp_path / 'c'}"]), log=lambda m: None)
    c = torch.load(pooled, weights_only=False)["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert np.isfinite(log[2]["val_beat"])
    # init=: a new run with a tempo output starts from the trained network (at lr 0 it stays it:
    # body and beat/downbeat rows copied, the tempo rows zero, a uniform distribution)
    tk = keys + ["tempo_bins=6", "tempo_weight=0.5", "lr=0", "min_lr=0", f"init={whole}"]
    t = fit(load_config(None, tk + [f"out={tmp_path / 't'}"]), log=lambda m: None)
    tm = torch.load(t, weights_only=False)["model"]
    assert all(torch.equal(a[k], tm[k]) for k in a if not k.startswith("head."))
    assert torch.equal(tm["head.weight"][:2], a["head.weight"]) and not tm["head.weight"][2:].any()
    log = [json.loads(line) for line in (tmp_path / "t" / "log.jsonl").read_text().splitlines()]
    assert log[0]["tempo"] == pytest.approx(np.log(6), rel=1e-4) and 0.0 <= log[2]["val_tempo_acc"] <= 1.0
    assert BeatNet.load(export_weights(t, tmp_path / "wt.npz")).arch.tempo_bins == 6
    from engine.cli import CliError

    with pytest.raises(CliError, match="another body"):  # a network of other channels is refused
        fit(load_config(None, tk + ["channels=12", f"out={tmp_path / 'u'}"]), log=lambda m: None)


# ---------------------------------------------------------------------------------------------- evaluation
def test_max_tracks_spread_over_the_set():
    from training.beat_eval import spread

    ids = [f"a{i}" for i in range(60)] + [f"b{i}" for i in range(40)]
    got = spread(ids, 10)
    assert len(got) == 10 and got[0] == "a0" and got[-1] == "b39" and sum(g.startswith("b") for g in got) == 4
    assert spread(ids, None) == ids and spread(ids, 500) == ids


def test_lock_time_and_downbeat_decoder():
    from training.beat_eval import decode_downbeats, lock_time, score_track

    ref = np.arange(0.5, 30, 0.5)
    assert lock_time(ref, ref) == 0.0
    late = ref[ref >= 5.0] + 0.01
    assert lock_time(ref, np.r_[0.3, 1.7, late]) == pytest.approx(4.5)
    assert np.isnan(lock_time(ref, ref + 0.2))
    fps = 50.0
    act = np.zeros(len(ref) * 25 + 50, np.float32)
    down = act.copy()
    for j, b in enumerate(ref):
        i = int(round((b - 0.0175) * fps))
        act[i] = 1.0
        down[i] = 0.9 if j % 3 == 1 else 0.1  # 3/4, the bar starting on the second beat
    a = BeatActivations(act, down, 0.0175, fps)
    want = ref[1::3]
    for causal in (True, False):
        got = decode_downbeats(ref, a, causal=causal)
        assert set(np.round(want[3:], 3)) <= set(np.round(got, 3))
    s = score_track(ref, ref, want, decode_downbeats(ref, a, causal=False))
    assert s["F"] == 1.0 and s["downbeat_F"] == 1.0 and s["lock_s"] == 0.0


@pytest.mark.slow
def test_eval_beats_of_a_network(clicks, tmp_path):
    from training.beatnet import BeatNetTorch, save_checkpoint
    from training.evaluate import evaluate_beats

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "c.pt", BeatNetTorch(BeatNetArch(channels=8, dilations=(1, 2))))
    r = evaluate_beats(tmp_path / "c.pt", clicks, "validation")
    assert r["source"] == "net" and r["n_tracks"] == 1
    for mode in ("causal", "offline"):
        assert set(r[mode]) >= {"F", "CMLt", "AMLt", "downbeat_F", "lock_s_median", "locked"}


def test_shipped_beside_the_model_and_synced_into_the_built_dir(tmp_path, net):
    """``python -m export.cache add`` lists the file in packed.json; a built directory gets a copy
    listed in its manifest (sha256-checked on load), replaced when the packed one changes."""
    from engine.manifest import ModelDirError, sha256_file, sync_optional
    from export.cache import add_file

    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "packed.json").write_text(json.dumps({"files": {"tokenizer.json": {"path": "tokenizer.json"}}}))
    e = add_file(packed, net.path)
    doc = json.loads((packed / "packed.json").read_text())
    assert doc["files"]["beatnet.npz"] == e and e["sha256"] == sha256_file(packed / "beatnet.npz")
    assert "tokenizer.json" in doc["files"] and find_beatnet(packed) == packed / "beatnet.npz"
    built = tmp_path / "built"
    built.mkdir()
    (built / "manifest.json").write_text(json.dumps({"files": {}}))
    sync_optional(packed, doc, built)
    man = json.loads((built / "manifest.json").read_text())
    assert man["files"]["beatnet"]["sha256"] == e["sha256"] and (built / "beatnet.npz").is_file()
    assert BeatNet.load(find_beatnet(built)).arch == net.arch
    sync_optional(packed, {"files": {}}, built)  # no longer shipped: removed from the built dir
    assert "beatnet" not in json.loads((built / "manifest.json").read_text())["files"]
    assert not (built / "beatnet.npz").exists()
    doc["files"]["beatnet.npz"]["sha256"] = "0" * 64
    with pytest.raises(ModelDirError, match="corrupt"):
        sync_optional(packed, doc, built)
    with pytest.raises(ModelDirError, match="only"):
        add_file(packed, packed / "packed.json")


def test_a_new_network_beside_packed_weights_reaches_every_loader(tmp_path, net, monkeypatch):
    """A packed directory resolves to its built forms (what ``load_manifest``, the server, the
    evaluation and the calibration read); when its beat network changes (a new ``beatnet.npz``
    listed in packed.json), the next resolve hands out the new one, not the built copy of the old."""
    from engine.manifest import MANIFEST, PACKED_FORMAT, PACKED_VERSION, built_dir, resolve_model_dir, sha256_file
    from export.cache import add_file

    monkeypatch.setenv("STEMJEPA_CACHE", str(tmp_path / "cache"))
    packed = tmp_path / "packed"
    packed.mkdir()
    fp = "ab" * 32
    (packed / "packed.json").write_text(json.dumps({"format": PACKED_FORMAT, "version": PACKED_VERSION,
                                                    "fingerprint": fp, "weights": {}, "files": {}}))
    add_file(packed, net.path)
    out = built_dir(packed)
    out.mkdir(parents=True)
    (out / MANIFEST).write_text(json.dumps({"fingerprint": fp, "files": {}}))
    assert resolve_model_dir(packed) == out
    assert sha256_file(find_beatnet(out)) == sha256_file(packed / "beatnet.npz")
    v2 = tmp_path / "v2" / "beatnet.npz"  # another network: the same file with other weights
    v2.parent.mkdir()
    with np.load(net.path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    k = next(k for k, a in arrays.items() if a.dtype.kind == "f" and a.size > 1)
    arrays[k] = arrays[k] * 1.5
    np.savez(v2, **arrays)
    add_file(packed, v2)
    got = find_beatnet(resolve_model_dir(packed))
    assert sha256_file(got) == sha256_file(v2) != sha256_file(net.path)


def test_matcher_takes_its_beats_from_the_network(net):
    """With a beat network the hop feeds the tracker the network's activation over the stream
    (equal to the network over the whole signal), with downbeats, and never runs the beat head;
    ``beat_source="head"`` keeps the head."""
    from test_pipeline_backend import MicroBackend, mixture

    from engine.pipeline import Matcher

    be = MicroBackend(seed=0)
    x = mixture(1, 6.0)
    ref = net.from_audio(x)
    runs = {}
    for chunk in (2560, 777):
        m = Matcher(be, None, beatnet=net)
        assert m.beat_source == "net"
        runs[chunk] = [r for r in m.run_array(x, chunk=chunk) if r.ready]
        assert be.calls["beats"] == 0
    for res in runs.values():
        act = np.concatenate([r.activation for r in res])
        down = np.concatenate([r.downbeat_activation for r in res])
        m0 = int(round((res[0].activation_time - ref.t0) * ref.fps))
        n = len(act)
        assert m0 >= 0 and len(ref) - m0 - 8 < n <= len(ref) - m0 and len(down) == n  # less the unfinished hop
        assert np.abs(act - ref.beat[m0:m0 + n]).max() < 1e-5 and np.abs(down - ref.downbeat[m0:m0 + n]).max() < 1e-5
        assert all("beatnet" in r.timings and "beat_head" not in r.timings for r in res)
        assert res[0].to_dict()["downbeat_activation"] == pytest.approx(list(res[0].downbeat_activation))
    m = Matcher(be, None, beat_source="head")
    r = [r for r in m.run_array(x) if r.ready]
    assert m.beat_source == "head" and r[0].downbeat_activation is None and be.calls["beats"] > 0
    assert Matcher(be, None).beat_source == "head"  # the directory has no network
    with pytest.raises(ValueError, match="beat network"):
        Matcher(be, None, beat_source="net")
    with pytest.raises(ValueError, match="beat_source"):
        Matcher(be, None, beat_source="both")
    quiet = [r for r in Matcher(be, None, beatnet=net).run_array(np.zeros(SR * 3, np.float32)) if r.ready]
    assert quiet and not any(r.activation.any() or r.downbeat_activation.any() for r in quiet)
    assert all(r.tempo_activation is None for r in runs[2560])  # this network has no tempo output


def test_matcher_feeds_a_tempo_output_to_the_tracker(tmp_path):
    """A network with a tempo output: each hop carries its tempo-class probabilities, aligned with
    the beat activation and equal to the network's over the whole signal, and the tracker gets them."""
    from test_pipeline_backend import MicroBackend, mixture

    from engine.pipeline import Matcher

    arch = BeatNetArch(tempo_bins=16)
    p = tmp_path / "beatnet.npz"
    BeatNet.save(p, random_arrays(arch, seed=2), {"arch": arch.to_dict(), "frontend": {}})
    net = BeatNet.load(p)
    x = mixture(1, 6.0)
    ref = net.from_audio(x)
    m = Matcher(MicroBackend(seed=0), None, beatnet=net, tracker_kw={"tempo_power": 0.05})
    seen = []
    real = m.tracker.process
    m.tracker.process = lambda *a, **k: (seen.append(k.get("tempo")), real(*a, **k))[1]
    res = [r for r in m.run_array(x, chunk=2560) if r.ready]
    tempo = np.concatenate([r.tempo_activation for r in res])
    m0 = int(round((res[0].activation_time - ref.t0) * ref.fps))
    assert tempo.shape == (sum(len(r.activation) for r in res), 16)
    assert np.abs(tempo - ref.tempo[m0:m0 + len(tempo)]).max() < 1e-5
    assert len(seen) >= len(res) and all(t is not None and t.shape[1] == 16 for t in seen[-len(res):])
    assert "tempo_activation" not in res[0].to_dict()



SHIPPED = ROOT / "engine" / "assets" / "model" / "beatnet.npz"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped model directory has no beat network")
def test_the_shipped_network_hears_no_beat_without_music_and_the_demo_tempo_with_it():
    """The shipped weights: listed in packed.json, small; low activation on silence, noise, a held
    chord and a steady tone; on the demo track (94 BPM) the causal tracker locks to its tempo."""
    from engine.audio import load_audio
    from engine.beats import CausalBeatTracker

    assert find_beatnet(SHIPPED.parent) == SHIPPED and SHIPPED.stat().st_size < 1_000_000  # 64 channels: 706 kB
    net = BeatNet.load(SHIPPED)
    n = SR * 10
    t = np.arange(n) / SR
    quiet = {"silence": np.zeros(n), "white noise": 0.1 * np.random.default_rng(0).standard_normal(n),
             "chord": sum(0.08 * np.sin(2 * np.pi * f * k * t) / k for f in (261.6, 329.6, 392.0) for k in range(1, 5)),
             "tone": 0.3 * np.sin(2 * np.pi * 440.0 * t)}
    for name, x in quiet.items():
        a = net.from_audio(x.astype(np.float32))
        assert a.beat.max() < 0.3 and a.downbeat.max() < 0.3, (name, a.beat.max(), a.downbeat.max())
    demo = load_audio(ROOT / "engine" / "assets" / "demo" / "demo_track.flac")
    a = net.from_audio(demo)
    assert a.beat.max() > 0.5
    tracker = CausalBeatTracker()
    st = tracker.process(a.beat)
    assert abs(st.tempo - 94.0) / 94.0 < 0.04, st.tempo  # its MIDI tempo map: 94 BPM


def test_hard_negative_terms_penalise_half_beats_and_non_downbeats():
    from training.beatnet import beat_losses

    T = 100
    targets = torch.zeros(1, 4, T)
    targets[0, 0, ::20] = 1.0      # beats
    targets[0, 1, ::80] = 1.0      # downbeats
    targets[0, 2, 10::20] = 1.0    # half-beat points
    targets[0, 3, 20::20] = 1.0    # beats that are not downbeats
    targets[0, 3, 80] = 0.0
    mask = torch.ones(1)
    quiet = torch.full((1, 2, T), -4.0)
    octave = quiet.clone()
    octave[0, 0, 10::20] = 4.0     # fires on the half-beats
    octave[0, 1, 20::20] = 4.0     # calls every beat a downbeat
    b0, d0 = beat_losses(octave, targets, mask, 2.0)
    b1, d1 = beat_losses(octave, targets, mask, 2.0, offbeat_weight=1.0, nondownbeat_weight=1.0)
    assert b1 > b0 + 1.0 and d1 > d0 + 1.0
    # where the output is quiet on the masks the extra terms cost almost nothing
    b2, d2 = beat_losses(quiet, targets, mask, 2.0)
    b3, d3 = beat_losses(quiet, targets, mask, 2.0, offbeat_weight=1.0, nondownbeat_weight=1.0)
    assert float(b3 - b2) < 0.05 and float(d3 - d2) < 0.05


def test_demo_check_counts_beats_on_the_beat_and_half_beat_grids():
    """The shipped network on the demo track (94 BPM): most live beats on the true beats, few on
    the half-beats between them, and the tempo the song's; a tracker forced to the double tempo's
    range must show up on the half-beat grid instead."""
    from training.beat_eval import demo_check

    r = demo_check(ROOT / "engine" / "assets" / "model")
    assert r["beats"] > 20 and r["on_beat"] > 0.6 and r["on_half"] < 0.25
    assert 85 < r["bpm"] < 105
    fast = demo_check(ROOT / "engine" / "assets" / "model", {"min_bpm": 170.0, "max_bpm": 215.0})
    # (it locks later than at the song's own tempo: more beats, though fewer than twice as many)
    assert fast["bpm"] > 160 and fast["on_half"] > 0.3 and fast["beats"] > r["beats"]

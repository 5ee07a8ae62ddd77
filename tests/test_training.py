"""Training phases on a tiny rendered fixture: losses fall, resume is exact, DDP runs on gloo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

SF2 = "/usr/share/sounds/sf2/TimGM6mb.sf2"
pytestmark = pytest.mark.skipif(not Path(SF2).is_file(), reason="needs Debian timgm6mb-soundfont (scripts/setup_system.sh)")


def _song(path: Path, seed: int):
    import mido

    rng = np.random.default_rng(seed)
    mid = mido.MidiFile(ticks_per_beat=96)
    tempo = mido.bpm2tempo(int(rng.integers(90, 140)))
    root = int(rng.integers(40, 52))
    for ch, prog, base in ((0, 33, root), (1, 0, root + 24), (9, 0, None)):
        tr = mido.MidiTrack()
        mid.tracks.append(tr)
        if ch == 0:
            tr.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
        if ch != 9:
            tr.append(mido.Message("program_change", program=prog, channel=ch, time=0))
        for beat in range(48):  # 12 bars of 4/4
            if ch == 9:
                note = 36 if beat % 2 == 0 else 38
            else:
                note = base + int(rng.choice([0, 3, 5, 7, 10, 12]))
            tr.append(mido.Message("note_on", note=note, velocity=90, channel=ch, time=0))
            tr.append(mido.Message("note_off", note=note, velocity=0, channel=ch, time=96))
    mid.save(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from training.data.render import render_corpus

    base = tmp_path_factory.mktemp("fixture")
    midi = base / "midi"
    midi.mkdir()
    for i in range(4):
        _song(midi / f"song{i}.mid", seed=i)
    out = base / "data"
    render_corpus([midi], out, SF2, jobs=1, excerpt=None, val_fraction=0.0, seed=0, progress=False)
    assert len([p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 4
    return out


def run_fit(data, out, *overrides, model="micro"):
    from training.fit import TrainConfig, fit

    cfg = TrainConfig.load(None, [f"data={data}", f"out={out}", f"model={model}", "frames=160", "batch_size=4",
                                  "warmup=2", "threads=1", "ckpt_every=1000", "norm_samples=8", *overrides])
    return fit(cfg)


def losses(out):
    return [json.loads(l)["loss"] for l in (Path(out) / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("phase,extra", [("contrastive", ["lr=2e-3"]),
                                         ("jepa", ["lr=2e-3", "conditioning=film"]),
                                         ("jepa", ["lr=2e-3", "conditioning=class"])])
def test_phase_loss_falls(dataset, tmp_path, phase, extra):
    run_fit(dataset, tmp_path / "run", f"phase={phase}", "steps=24", *extra)
    l = losses(tmp_path / "run")
    assert len(l) == 24 and all(np.isfinite(l))
    assert np.mean(l[-6:]) < np.mean(l[:6]), l


def test_beats_phase_from_init_loss_falls(dataset, tmp_path):
    ck = run_fit(dataset, tmp_path / "p2", "phase=jepa", "steps=2")
    run_fit(dataset, tmp_path / "beats", "phase=beats", f"init={ck}", "steps=24", "lr=5e-3")
    l = losses(tmp_path / "beats")
    assert np.mean(l[-6:]) < np.mean(l[:6]), l
    from training.checkpoint import load_model

    m, state = load_model(tmp_path / "beats" / "final.pt")
    assert state["phase"] == "beats" and state["labels"]  # labels carried for the conditioning cache


@pytest.mark.parametrize("extra", [[], ["contrastive_weight=1.0", "queue_size=12", "group_size=2", "group_by=mixed"]],
                         ids=["plain", "queue+groups"])
def test_resume_is_exact(dataset, tmp_path, extra):
    common = ["phase=jepa", "steps=6", "lr=1e-3", *extra]
    run_fit(dataset, tmp_path / "a", *common)
    run_fit(dataset, tmp_path / "b", *common, "stop_after=3")
    assert len(losses(tmp_path / "b")) == 3
    run_fit(dataset, tmp_path / "b", *common)
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(lb) == 6
    np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6)


def test_phase2_from_phase1_syncs_target(dataset, tmp_path):
    import torch

    from training.checkpoint import load_model
    from training.fit import TrainConfig, build_model

    ck = run_fit(dataset, tmp_path / "p1", "phase=contrastive", "steps=2")
    cfg = TrainConfig.load(None, [f"init={ck}", "model=micro", f"out={tmp_path / 'p2'}"])
    m, _, resume = build_model(cfg, tmp_path / "p2")
    p1, _ = load_model(ck)
    assert resume is None
    for a, b in zip(m.target_encoder.parameters(), p1.encoder.parameters()):
        assert torch.equal(a, b)


def test_bad_options_are_refused(dataset, tmp_path):
    from training.fit import TrainConfig

    with pytest.raises(SystemExit, match="unknown training option"):
        TrainConfig.load(None, ["stepz=3"])
    with pytest.raises(SystemExit, match="phase"):
        TrainConfig.load(None, ["phase=pretrain"])
    with pytest.raises((SystemExit, ValueError)):
        run_fit(tmp_path / "nothing_here", tmp_path / "x", "steps=1")


@pytest.mark.slow
def test_ddp_two_cpu_processes(dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    import socket

    with socket.socket() as s:  # a port free now (a fixed one collides with a parallel run)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "training", "fit", f"data={dataset}", f"out={tmp_path / 'ddp'}", "model=micro", "frames=160",
           "batch_size=2", "steps=3", "threads=1", "norm_samples=4", "phase=jepa", "conditioning=class"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "ddp" / "final.pt").is_file()
    assert len(losses(tmp_path / "ddp")) == 3


def test_grouped_batches_share_category(dataset):
    from training.data.sampler import StemSampler
    from training.fit import grouped_samples

    s = StemSampler(dataset, split=None, seconds=2.0)
    items = grouped_samples(s, np.random.default_rng(3), 12, 4)
    assert len(items) == 12
    for g in range(3):
        cats = {it["category"] for it in items[4 * g: 4 * g + 4]}
        assert len(cats) == 1, cats
    assert len(grouped_samples(s, np.random.default_rng(3), 5, 0)) == 5


def test_song_grouped_batches_share_song_with_distinct_targets(dataset):
    from training.data.sampler import StemSampler
    from training.fit import grouped_samples

    s = StemSampler(dataset, split=None, seconds=2.0)
    items = grouped_samples(s, np.random.default_rng(5), 12, 3, by="song")
    assert len(items) == 12
    for g in range(4):
        run = items[3 * g: 3 * g + 3]
        assert len({it["track_id"] for it in run}) == 1, [it["track_id"] for it in run]
        assert len({it["stem_id"] for it in run}) == 3  # the fixture songs have 3 stems
    mixed = grouped_samples(s, np.random.default_rng(5), 12, 3, by="mixed")
    assert len({it["track_id"] for it in mixed[:3]}) == 1  # first run by song, the next by category
    assert len({it["category"] for it in mixed[3:6]}) == 1
    with pytest.raises(SystemExit, match="group_by"):
        from training.fit import TrainConfig

        TrainConfig.load(None, ["group_by=genre"])


def test_info_nce_centred_ignores_a_common_component_and_hubs():
    """Centred InfoNCE: a shared offset on one side (the mix/stem gap) changes nothing, and a hub
    column (a stem near every mix) cannot raise the loss; uncentred, both move it."""
    import torch

    from training.losses import info_nce

    torch.manual_seed(0)
    a = torch.randn(16, 8)
    b = a + 0.5 * torch.randn(16, 8)  # positives alike
    lt = torch.tensor(np.log(0.1))
    shift = 4.0 * torch.randn(1, 8)
    c0 = info_nce(a, b, lt, center=True)
    np.testing.assert_allclose(float(info_nce(a + shift, b - shift, lt, center=True)), float(c0), rtol=1e-5)
    assert abs(float(info_nce(a + shift, b - shift, lt)) - float(info_nce(a, b, lt))) > 0.1
    # a collapsed pair of sides (every row the same vector plus tiny noise) is at chance uncentred,
    # but centring sees the noise that still pairs the rows
    noise = 1e-3 * torch.randn(16, 8)
    flat_a, flat_b = shift + noise, shift + noise + 1e-4 * torch.randn(16, 8)
    assert abs(float(info_nce(flat_a, flat_b, lt)) - np.log(16)) < 0.05
    assert float(info_nce(flat_a, flat_b, lt, center=True)) < np.log(16) - 1.0


def test_info_nce_groups_rank_each_row_within_its_group_only():
    """With groups, the loss is the mean of the per-group losses: rows of other groups are no
    negatives (and moving them changes nothing)."""
    import torch

    from training.losses import info_nce

    torch.manual_seed(1)
    a, b = torch.randn(8, 6), torch.randn(8, 6)
    lt = torch.tensor(np.log(0.1))
    g = torch.arange(8) // 4
    grouped = info_nce(a, b, lt, groups=g)
    per = 0.5 * (info_nce(a[:4], b[:4], lt) + info_nce(a[4:], b[4:], lt))
    np.testing.assert_allclose(float(grouped), float(per), rtol=1e-5)
    b2 = b.clone()
    b2[4:] = 10 * torch.randn(4, 6)  # the second group changes: the first group's share does not
    first = info_nce(a[:4], b[:4], lt)
    np.testing.assert_allclose(float(info_nce(a, b2, lt, groups=g)) * 2 - float(info_nce(a[4:], b2[4:], lt)),
                               float(first), rtol=1e-5)
    assert abs(float(info_nce(a, b, lt)) - float(grouped)) > 0.05


def test_info_nce_queue_and_same_stem_mask():
    import torch

    from training.losses import info_nce

    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    lt = torch.tensor(np.log(0.1))
    keys = torch.arange(4)
    base = info_nce(a, b, lt, keys=keys)
    np.testing.assert_allclose(float(base), float(info_nce(a, b, lt)), rtol=1e-6)
    # queued copies of every positive: each is masked for its own row and a negative for the others
    same = info_nce(a, b, lt, keys=keys, queue=b.clone(), queue_keys=keys.clone())
    an, bn = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    l = (an @ bn.t() / 0.1).double()
    off = ~torch.eye(4, dtype=torch.bool)
    denom = l.exp().sum(1) + (l.exp() * off).sum(1)
    ab = -(l.diag() - denom.log()).mean()
    ba = torch.nn.functional.cross_entropy(l.t(), torch.arange(4))
    np.testing.assert_allclose(float(same), float(0.5 * (ab + ba)), rtol=1e-5)
    # the same vectors under other keys are hard negatives: the loss rises
    other = info_nce(a, b, lt, keys=keys, queue=b[:2].clone(), queue_keys=torch.tensor([10, 11]))
    assert float(other) > float(base) + 0.1
    # two rows of one stem in a batch are not each other's negatives
    keys_dup = torch.tensor([0, 0, 1, 2])
    b2 = b.clone()
    b2[1] = b[0]
    masked = info_nce(b2.clone(), b2, lt, keys=keys_dup)
    unmasked = info_nce(b2.clone(), b2, lt, keys=torch.arange(4))
    assert float(masked) < float(unmasked)


def test_negative_queue_is_fifo_and_round_trips():
    import torch

    from training.fit import NegativeQueue, stem_key

    q = NegativeQueue(5, 3)
    assert q.negatives() == (None, None)
    q.push(torch.ones(2, 3), torch.tensor([1, 2]))
    q.push(2 * torch.ones(4, 3), torch.tensor([3, 4, 5, 6]))
    v, k = q.negatives()
    assert v.shape == (5, 3) and k.tolist() == [3, 4, 5, 6, 1]
    r = NegativeQueue(5, 3)
    r.load(q.state())
    assert torch.equal(r.vectors, q.vectors) and torch.equal(r.keys, q.keys)
    other = NegativeQueue(8, 3)
    other.load(q.state())  # another size starts empty
    assert other.negatives() == (None, None)
    assert stem_key("t", "bass") == stem_key("t", "bass") != stem_key("t", "drums")


def test_alignment_ranks_the_own_stem_among_all_and_within_its_category():
    import torch

    from training.alignment import _ranks

    S = torch.eye(4) + 0.1  # every query nearest its own stem
    cats = np.array(["bass", "bass", "drums", "drums"])
    r = _ranks(S, cats)
    assert r["median_rank"] == 0.0 and r["mean_rank_in_category"] == 0.0
    S2 = 1.0 - torch.eye(4)  # every query farthest from its own stem
    r2 = _ranks(S2, cats)
    assert r2["median_rank"] == 1.0 and r2["mean_rank_in_category"] == 1.0
    assert r2["own_cos"] == 0.0 and r2["others_cos"] == 1.0


def test_phase1_batch_negatives_term_adds_the_whole_batch_loss():
    """Phase 1 with category groups and ``batch_negatives_weight``: the loss is the group InfoNCE
    plus w times the InfoNCE over the whole batch, on the same pooled embeddings; w = 0 is the group
    term alone."""
    import torch

    from training.config import get_config
    from training.fit import PhaseStep
    from training.losses import info_nce
    from training.model import StemJEPA, retrieval_normalise

    torch.manual_seed(0)
    m = StemJEPA(get_config("micro"))
    m.eval()
    batch = {"mix": torch.randn(8, 16000), "target": torch.randn(8, 16000)}
    runs = {}
    for w in (0.0, 0.5):
        step = PhaseStep(m, "contrastive", -5.0, 2.0, 0.0, 1.0, max_temp=0.1, center=True, group=4,
                         batch_negatives_weight=w)
        step.set_frames(80)
        with torch.no_grad():
            runs[w] = step(batch)
    with torch.no_grad():
        zc = m.encoder(step.features(batch["mix"]), 0)
        zt = m.encoder(step.features(batch["target"]), 0)
    p, t = retrieval_normalise(zc.float().mean(1)), retrieval_normalise(zt.float().mean(1))
    g = torch.arange(8) // 4
    grouped = info_nce(p, t, m.log_temp, max_temp=0.1, center=True, groups=g)
    whole = info_nce(p, t, m.log_temp, max_temp=0.1, center=True)
    np.testing.assert_allclose(float(runs[0.0][0]), float(grouped), rtol=1e-5)
    assert "infonce_batch" not in runs[0.0][1]
    np.testing.assert_allclose(float(runs[0.5][0]), float(grouped + 0.5 * whole), rtol=1e-5)
    np.testing.assert_allclose(float(runs[0.5][1]["infonce_batch"]), float(whole), rtol=1e-5)


def test_retrieval_centring_and_within_category_scores():
    """A common offset on every query hides which candidate is whose until the queries are centred;
    within-category figures rank each query among its own category's candidates only."""
    from training.evaluate import RetrievalEmbeddings, centre_embeddings, score_retrieval

    rng = np.random.default_rng(0)
    n, d = 12, 16
    C = rng.normal(size=(n, d))
    Q = C + 0.1 * rng.normal(size=(n, d)) + 40.0 * rng.normal(size=(1, d))  # own stem + a big common part
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    meta = [(f"t{i}", "s", "bass" if i % 2 else "drums", "bass" if i % 2 else "drums") for i in range(n)]
    e = RetrievalEmbeddings(unit(Q), unit(C), meta, "x", "contrastive", "film")
    plain, centred = score_retrieval(e), score_retrieval(e, center=True)
    assert centred["overall"]["R@1"] == 100.0 and plain["overall"]["R@1"] < 50.0
    assert centred["centred"] and not plain["centred"]
    # categories far apart: the top 5 (6 stems per category) are all of the asked category; queries
    # pointing at the other category's cluster: none are
    side = np.array([1.0 if m[3] == "bass" else -1.0 for m in meta])[:, None] * 10.0 * np.eye(d)[:1]
    clustered = RetrievalEmbeddings(unit(C + side), unit(C + side), meta, "x", "contrastive", "film")
    assert score_retrieval(clustered)["top5_category_precision"] == 100.0
    crossed = RetrievalEmbeddings(unit(C - side), unit(C + side), meta, "x", "contrastive", "film")
    assert score_retrieval(crossed)["top5_category_precision"] == 0.0
    ce = centre_embeddings(e)
    np.testing.assert_allclose(np.linalg.norm(ce.Q, axis=1), 1.0, rtol=1e-6)
    w = centred["within_category"]
    assert set(w["per_category"]) == {"bass", "drums"}
    assert w["per_category"]["bass"]["n_candidates"] == 6 and w["overall"]["n"] == n
    # within a category a query has fewer rivals: its rank can only improve
    assert w["overall"]["nrank_mean"] * 6 / 100 <= centred["overall"]["nrank_mean"] * n / 100 + 1e-9


def test_streamed_retrieval_tokens_from_warm_blocks_equal_whole_tracks(dataset, tmp_path):
    """The live-path token modes of the retrieval eval: windows kept with the 8 s before them
    (read_tracks(warm=...), what the suite holds in memory) give the same queries and candidates
    as the whole tracks, in every mode; streamed queries differ from window-encoded ones once a
    chunk has audio before it."""
    import torch

    from training import evaluate as ev
    from training.checkpoint import save_checkpoint
    from training.config import get_config
    from training.model import StemJEPA

    torch.manual_seed(0)
    m = StemJEPA(get_config("micro", causal=True, conditioning="class"))
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, m, norm={"mean": -5.0, "std": 2.5}, text={"encoder": "none", "dim": 384},
                    phase="jepa", step=0)
    win = ev.TorchLogMel().cfg.n_samples(800)
    whole = ev.read_tracks(dataset, None)
    blocks = ev.read_tracks(dataset, None, chunks=(4, win), warm=ev._warm("stream"))
    assert any(len(t.chunk_warm) > 1 and max(t.chunk_warm) > 0 for t in blocks)
    got = {}
    for mode in ev.TOKEN_MODES:
        a = ev.embed_retrieval(ckpt, whole, max_chunks=4, threads=1, tokens=mode)
        b = ev.embed_retrieval(ckpt, blocks, max_chunks=4, threads=1, tokens=mode)
        np.testing.assert_allclose(a.Q, b.Q, atol=1e-5)
        np.testing.assert_allclose(a.C, b.C, atol=1e-5)
        got[mode] = a
    np.testing.assert_allclose(got["live"].C, got["window"].C, atol=1e-6)  # live: candidates per chunk
    assert np.abs(got["live"].Q - got["window"].Q).max() > 1e-3
    assert np.abs(got["stream"].C - got["window"].C).max() > 1e-3

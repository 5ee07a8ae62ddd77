import numpy as np
import pytest

from training.evaluate import chunk_starts, random_metrics, ranks_from_distances, retrieval_metrics
from training.losses import widen_beat_targets
from training.schedules import ema_tau_at, lr_at


def test_ranks_hand_computed():
    # 3 queries x 4 candidates; true candidates 0, 1, 3
    dist = np.array([[0.1, 0.5, 0.3, 0.9],   # true 0 nearest -> rank 1
                     [0.2, 0.4, 0.1, 0.8],   # true 1 (0.4): 0.2 and 0.1 closer -> rank 3
                     [0.5, 0.5, 0.5, 0.5]])  # all tied: ties count against -> rank 4
    ranks = ranks_from_distances(dist, np.array([0, 1, 3]))
    assert ranks.tolist() == [1, 3, 4]
    m = retrieval_metrics(ranks, n_candidates=4)
    assert m["R@1"] == pytest.approx(100 / 3)
    assert m["R@5"] == pytest.approx(100.0)
    # normalised ranks (rank-1)/4: 0, 50, 75 %
    assert m["nrank_mean"] == pytest.approx((0 + 50 + 75) / 3)
    assert m["nrank_median"] == pytest.approx(50.0)


def test_random_ranking_figures():
    r = random_metrics(200)
    assert r["R@1"] == pytest.approx(0.5) and r["R@10"] == pytest.approx(5.0)
    assert r["nrank_median"] == pytest.approx(49.75)
    # an empirical random ranking agrees
    rng = np.random.default_rng(0)
    ranks = rng.integers(1, 201, size=20000)
    m = retrieval_metrics(ranks, 200)
    assert abs(m["R@10"] - r["R@10"]) < 0.6


def test_chunk_starts():
    assert chunk_starts(100, 200, 4) == [0]
    assert chunk_starts(1000, 200, 10) == [0, 200, 400, 600, 800]
    s = chunk_starts(10_000, 200, 4)
    assert len(s) == 4 and s[0] == 0 and s[-1] == 9800


def test_schedules_pure_functions():
    kw = dict(base=1e-3, min_lr=1e-5, warmup=10, total=100)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(100, **kw) == pytest.approx(1e-5)
    assert lr_at(55, **kw) < lr_at(20, **kw)
    assert ema_tau_at(0, start=0.99, end=0.999, total=100) == pytest.approx(0.99)
    assert ema_tau_at(50, start=0.99, end=0.999, total=100) == pytest.approx(0.9945)
    assert ema_tau_at(500, start=0.99, end=0.999, total=100) == pytest.approx(0.999)


def test_beat_label_widening():
    y = widen_beat_targets([0.0, 0.5, 0.51], n_frames=50, fps=50.0, widen=1, neighbour=0.5)
    assert y[0] == 1 and y[1] == 0.5
    assert y[25] == 1 and y[24] == 0.5 and y[26] == 1  # 0.51 s -> frame 26 (beat wins over neighbour)
    assert y[27] == 0.5 and y[10] == 0


def _result(cond="label", n_tracks=3, n_c=10, chunks=4, cats=None, ids=None):
    r = {"conditioning": cond, "n_tracks": n_tracks, "n_candidates": n_c,
         "per_category": {c: {"n": n} for c, n in (cats or {"bass": 4, "drums": 6}).items()},
         "command": f"python -m training eval retrieval --max-chunks {chunks} --conditioning {cond}"}
    if ids is not None:
        r["track_ids"] = ids
    return r


def test_report_reuses_only_results_of_the_same_data(tmp_path):
    from training.report import check_reusable

    fresh = {**_result(), "max_chunks": 4, "track_ids": ["a", "b", "c"]}
    check_reusable(_result(), fresh, "label", 4, "x.json")  # old file without track ids: counts match
    check_reusable(_result(ids=["c", "b", "a"]), fresh, "label", 4, "x.json")
    for bad, why in ((_result(cond="category"), "conditioning"), (_result(chunks=2), "max-chunks"),
                     (_result(n_tracks=4), "n_tracks"), (_result(n_c=11), "n_candidates"),
                     (_result(cats={"bass": 5, "drums": 5}), "per category"),
                     (_result(ids=["a", "b", "d"]), "track ids")):
        with pytest.raises(SystemExit, match=why):
            check_reusable(bad, fresh, "label", 4, "x.json")


def test_track_list_selects_exactly_those_tracks(tmp_path):
    import json

    import soundfile as sf

    from training.evaluate import read_track_list, read_tracks

    for t in ("t1", "t2", "t3"):
        (tmp_path / t).mkdir()
        for s in ("bass", "drums"):
            sf.write(tmp_path / t / f"{s}.wav", 0.1 * np.random.default_rng(0).standard_normal(1600), 16000)
        (tmp_path / t / "track.json").write_text(json.dumps(
            {"stems": {s: {"label": s, "category": s} for s in ("bass", "drums")}}))
    (tmp_path / "list.json").write_text(json.dumps({"tracks": ["t3", "t1"]}))
    got = read_tracks(tmp_path, None, only=read_track_list(tmp_path / "list.json"))
    assert [t.track_id for t in got] == ["t3", "t1"]
    with pytest.raises(SystemExit, match="not in split"):
        read_tracks(tmp_path, None, only=["t1", "nope"])
    (tmp_path / "bad.json").write_text("{\"tracks\": []}")
    with pytest.raises(SystemExit, match="non-empty list"):
        read_track_list(tmp_path / "bad.json")

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

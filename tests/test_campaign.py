"""Campaign state: bf16 weights that rebuild the model, the learning curve and its plot."""

import pytest

torch = pytest.importorskip("torch")


def _suite(median):
    m = {"R@1": 5.0, "R@5": 30.0, "R@10": 45.0, "nrank_median": median, "nrank_mean": 8.0, "n": 10}
    return {"checkpoint": "x.pt", "sets": {s: {"overall": m, "n_tracks": 5, "n_candidates": 10,
                                               "per_category": {"bass": m}}
                                           for s in ("in-domain", "cross-corpus", "cross-soundfont")}}


def test_bf16_weights_rebuild_the_model(tmp_path):
    from training.campaign import save_weights
    from training.checkpoint import load_model, save_checkpoint
    from training.config import get_config
    from training.model import StemJEPA

    torch.manual_seed(0)
    m = StemJEPA(get_config("micro", causal=True))
    save_checkpoint(tmp_path / "c.pt", m, norm={"mean": -4.0, "std": 3.0}, text={"encoder": "x", "dim": 384},
                    phase="jepa", step=7, optimizer={"big": torch.zeros(1000)})
    info = save_weights(tmp_path / "c.pt", tmp_path / "w.pt")
    assert info["step"] == 7
    raw = torch.load(tmp_path / "w.pt", weights_only=False)
    assert "optimizer" not in raw and all(v.dtype == torch.bfloat16 for v in raw["model"].values()
                                          if v.is_floating_point())
    back, st = load_model(tmp_path / "w.pt")
    assert back.cfg == m.cfg and st["step"] == 7
    for a, b in zip(back.parameters(), m.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=1e-2)  # bf16: 8 bits of mantissa


def test_curve_log_plot_and_table(tmp_path):
    from training.campaign import log_eval, plot_curve, read_curve, suite_table

    log_eval(_suite(4.0), 1.0, 1000, "a", tmp_path / "c.jsonl")
    log_eval(_suite(3.0), 2.0, 2000, "b", tmp_path / "c.jsonl")
    recs = read_curve(tmp_path / "c.jsonl")
    assert [r["hours"] for r in recs] == [1.0, 2.0]
    assert recs[1]["sets"]["cross-corpus"]["nrank_median"] == 3.0
    out = plot_curve(tmp_path / "c.png", tmp_path / "c.jsonl")
    assert out.stat().st_size > 1000
    t = suite_table({"model": _suite(3.0)}, per_category=True)
    assert t.count("\n") == 1 + 3 * 2 and "| cross-corpus | model | 5, 10 | 5.0 | 30.0 |" in t

import pytest
import torch

from training.checkpoint import CheckpointError, load_model, save_checkpoint
from training.config import CONFIGS, get_config
from training.model import StemJEPA, pool_embedding


@pytest.mark.parametrize("name", ["micro", "tiny"])
@pytest.mark.parametrize("frames", [800, 320, 16])
def test_encoder_shapes_any_length(name, frames):
    cfg = get_config(name)
    m = StemJEPA(cfg).eval()
    with torch.no_grad():
        z = m.encoder(torch.randn(2, 80, frames))
        assert z.shape == (2, 5 * frames // 16, cfg.d_model)
        assert m.beat_head(z).shape == (2, frames // 16 * 8)
        emb = pool_embedding(z)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_encoder_rejects_bad_shapes():
    m = StemJEPA(get_config("micro"))
    for shape in [(1, 64, 800), (1, 80, 810), (1, 80, 816)]:
        with pytest.raises(ValueError, match="encoder input"):
            m.encoder(torch.randn(*shape))


def test_position_embedding_sliced_consistently():
    # a shorter input sees the same position codes as the start of a long one
    m = StemJEPA(get_config("micro"))
    assert torch.equal(m.encoder.pos[:10], m.encoder.pos[:50][:10])
    assert m.encoder.pos.shape == (50, 5, 64)


@pytest.mark.parametrize("cond", ["film", "class"])
def test_predictor_uses_conditioning(cond):
    cfg = get_config("micro", conditioning=cond)
    torch.manual_seed(0)
    m = StemJEPA(cfg)
    if cond == "film":
        for f in m.predictor.film:
            torch.nn.init.normal_(f.weight, std=0.5)
        c1, c2 = torch.randn(1, cfg.text_dim), torch.randn(1, cfg.text_dim)
    else:
        c1, c2 = torch.tensor([0]), torch.tensor([2])
    z = torch.randn(1, 250, cfg.d_model)
    a, b = m.predict(z, c1), m.predict(z, c2)
    assert a.shape == z.shape
    assert not torch.allclose(a, b, atol=1e-4)


def test_ema_update_moves_target():
    m = StemJEPA(get_config("micro"))
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.target_encoder.parameters()]
    m.ema_update(0.9)
    for b, t, o in zip(before, m.target_encoder.parameters(), m.encoder.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)
    assert all(not p.requires_grad for p in m.target_encoder.parameters())


def test_checkpoint_rebuilds_alone(tmp_path):
    cfg = get_config("micro", conditioning="class")
    m = StemJEPA(cfg).eval()
    save_checkpoint(tmp_path / "m.pt", m, norm={"mean": -3.0, "std": 2.5}, text={"encoder": "none", "dim": 384})
    m2, state = load_model(tmp_path / "m.pt")
    assert m2.cfg == cfg and state["norm"]["std"] == 2.5
    x = torch.randn(1, 80, 160)
    with torch.no_grad():
        assert torch.equal(m.encoder(x), m2.encoder(x))
    with pytest.raises(CheckpointError, match="differs"):
        load_model(tmp_path / "m.pt", expect=get_config("micro"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model(tmp_path / "junk.pt")


def test_configs_valid():
    assert CONFIGS["base"].d_model == 768 and CONFIGS["base"].depth == 12
    with pytest.raises(KeyError):
        get_config("huge")
    with pytest.raises(ValueError):
        get_config("micro", d_model=66)


def test_causal_encoder_tokens_do_not_depend_on_later_audio():
    """Block-causal encoder: the tokens of the first k columns are the same whether or not later
    audio follows; the bidirectional encoder's are not."""
    import torch

    from training.config import get_config
    from training.model import StemJEPA, causal_bias

    torch.manual_seed(0)
    x = torch.randn(2, 80, 800)
    causal = StemJEPA(get_config("micro", causal=True)).eval()
    bidir = StemJEPA(get_config("micro")).eval()
    with torch.no_grad():
        for k in (16, 160, 400):
            z_full = causal.encoder(x)
            z_pre = causal.encoder(x[:, :, :k])
            torch.testing.assert_close(z_full[:, : k // 16 * 5], z_pre, atol=1e-5, rtol=1e-5)
        assert (bidir.encoder(x)[:, :125] - bidir.encoder(x[:, :, :400])).abs().max() > 1e-2
    b = causal_bias(cols=4, rows=2, heads=2, window=2)
    assert b.shape == (2, 8, 8)
    assert b[0, 2, 0] < 0 and torch.isfinite(b[0, 2, 0])  # one column back: biased, visible
    assert torch.isinf(b[0, 4, 0])  # two columns back: outside a window of 2
    assert torch.isinf(b[1, 0, 2])  # the future: masked


def test_causal_model_trains_from_a_bidirectional_init(tmp_path):
    """A causal run initialised from a bidirectional checkpoint (the A/B's causal arm)."""
    import torch

    from training.checkpoint import load_model, save_checkpoint
    from training.config import get_config
    from training.fit import build_model, TrainConfig
    from training.model import StemJEPA

    src = StemJEPA(get_config("micro"))
    save_checkpoint(tmp_path / "b.pt", src, norm={"mean": 0.0, "std": 1.0}, text={"encoder": "none", "dim": 384},
                    phase="jepa", step=1)
    cfg = TrainConfig(model="micro", causal=True, init=str(tmp_path / "b.pt"), out=str(tmp_path / "run"))
    model, _, _ = build_model(cfg, tmp_path / "run")
    assert model.cfg.causal and not load_model(tmp_path / "b.pt")[0].cfg.causal
    for a, b in zip(model.encoder.parameters(), src.encoder.parameters()):
        torch.testing.assert_close(a, b)
    # the time half of the absolute position embedding is gone, the frequency half kept
    d = model.cfg.d_model
    assert model.encoder.pos[..., d // 2:].abs().max() == 0
    torch.testing.assert_close(model.encoder.pos[..., : d // 2], src.encoder.pos[..., : d // 2])

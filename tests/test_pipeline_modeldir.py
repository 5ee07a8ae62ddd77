"""The library and the matcher on a real model directory: a freshly initialised micro checkpoint
exported with ``export.core.export_model`` (fp32, no text encoder) and loaded with
``engine.backends.load_backend`` (ONNX Runtime)."""
import json

import numpy as np
import pytest
from test_pipeline_backend import MicroBackend, Passthrough, mixture, synth_stems, write_dataset

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # a fresh export per module; test_pipeline and test_backends keep the fast tier

from engine.library import LibraryError, StemLibrary, build, main  # noqa: E402
from engine.pipeline import Matcher  # noqa: E402

LABELS = ["bass", "drums", "electric piano", "drum kit", "electric bass"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from export.core import export_model
    from training.checkpoint import save_checkpoint
    from training.config import get_config
    from training.model import StemJEPA

    d = tmp_path_factory.mktemp("micro_model")
    torch.manual_seed(0)
    m = StemJEPA(get_config("micro"))
    for p in m.predictor.parameters():  # FiLM starts at zero: give conditioning an effect
        p.data.add_(0.02 * torch.randn_like(p))
    save_checkpoint(d / "micro.pt", m, norm={"mean": -6.0, "std": 4.0},
                    text={"encoder": "all-MiniLM-L6-v2", "dim": 384}, labels=LABELS)
    export_model(d / "micro.pt", d / "model", ("fp32",), text=False, log=lambda m: None)
    return d / "model"


@pytest.fixture(scope="module")
def backend(model_dir):
    from engine.backends import load_backend

    return load_backend(model_dir, kind="onnx-fp32", threads=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ds") / "ds", n_tracks=3, seconds=16.0)


@pytest.fixture(scope="module")
def library(dataset, backend, tmp_path_factory):
    return build(dataset, backend, tmp_path_factory.mktemp("idx") / "lib.npz", progress=False, log=lambda m: None)


def test_library_built_by_the_model_dir(library, backend, dataset):
    assert library.fingerprint == backend.manifest.fingerprint
    assert library.n_stems == 9 and len(library) == 9 * 3  # 16 s: segments at 0, 4, 8 s
    assert library.dim == backend.manifest.config["d_model"]
    # a library made by another model is refused
    with pytest.raises(LibraryError, match="another model"):
        Matcher(backend, StemLibrary.from_arrays(library.embeddings, ["x"] * len(library), fingerprint="0" * 64))


def test_matcher_on_the_model_dir_finds_the_stem_it_hears(backend, library):
    # fresh weights: target encoder == encoder, so the pooled context embedding of a stem's own
    # window equals its library segment (the predictor is untrained, hence Passthrough)
    stem = synth_stems(1, 16.0, bpm=112)["bass"]
    m = Matcher(Passthrough(backend), library, instruments=["bass"], k=3)
    res = m.run_array(np.concatenate([stem, np.zeros(240, np.float32)]))  # as the library pads it
    aligned = [r for r in res if r.window_frames == 800 and (r.end_sample - 240) // 160 in (800, 1200, 1600)]
    assert len(aligned) == 3
    for r, off in zip(aligned, (0.0, 4.0, 8.0)):
        top = r.matches["bass"][0]
        assert (top.stem_id, top.offset, top.label) == ("track1/bass", off, "electric bass")
        assert top.score > 0.999


def test_matcher_real_predictor_and_conditioning(backend, library):
    x = mixture(0, 9.0)
    # the whole library for both instruments, so that only the conditioning tells them apart
    kw = dict(instruments=["drums", "electric bass"], k=4, restrict_category=False)
    whole = Matcher(backend, library, **kw).run_array(x, chunk=len(x))
    framed = Matcher(backend, library, **kw).run_array(x, chunk=160)
    assert len(whole) == len(framed) == (len(x) - 240) // 2560
    for a, b in zip(whole, framed):
        assert a.end_sample == b.end_sample
        assert {k: [(m.stem_id, m.offset, m.score) for m in v] for k, v in a.matches.items()} == \
               {k: [(m.stem_id, m.offset, m.score) for m in v] for k, v in b.matches.items()}
        assert np.array_equal(a.activation, b.activation)
    last = whole[-1]
    assert set(last.matches) == {"drums", "electric bass"} and all(len(v) == 4 for v in last.matches.values())
    qd = [m.score for m in last.matches["drums"]]
    qb = [m.score for m in last.matches["electric bass"]]
    assert qd != qb  # the conditioning changes the query
    assert last.beat is not None and 0 <= last.beat.phase < 1 and len(last.activation) == 8
    assert np.all((last.activation >= 0) & (last.activation <= 1))
    assert set(last.timings) >= {"read", "frontend", "encode", "predict", "search", "beat_head", "tracker", "total"}
    json.dumps(last.to_dict())  # plain data for the wire
    # by default each instrument ranks only its category's stems (fewer than k when it has fewer)
    r = Matcher(backend, library, instruments=["drums", "electric bass"], k=4).run_array(x[:16000 * 3])[-1]
    assert r.matches["drums"] and all(m_.category == "drums" for m_ in r.matches["drums"])
    assert r.matches["electric bass"] and all(m_.category == "bass" for m_ in r.matches["electric bass"])
    m = Matcher(backend, library, instruments=["drums"])
    with pytest.raises(ValueError, match="cannot condition"):
        m.set_instruments(["fretless bass"])  # no text encoder in this model dir, not a known label
    assert m.instruments == ["drums"]


@pytest.mark.slow
def test_cli_build_and_refusal(model_dir, dataset, tmp_path, backend):
    out = tmp_path / "cli_lib"
    assert main(["build", str(dataset), str(out), "--model", str(model_dir), "--hop", "8", "--no-progress",
                 "--threads", "1"]) == 0
    lib = StemLibrary.load(out, expect_fingerprint=backend.manifest.fingerprint)
    assert lib.hop_s == 8.0 and len(lib) == 9 * 2
    assert main(["build", str(dataset), str(out), "--model", str(tmp_path / "nope"), "--no-progress"]) == 2
    # an index from the test adapter (another model) cannot be resumed by this model
    other = tmp_path / "other.npz"
    build(dataset, MicroBackend(seed=3), other, progress=False, log=lambda m: None)
    assert main(["build", str(dataset), str(other), "--model", str(model_dir), "--no-progress"]) == 2

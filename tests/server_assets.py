"""Real engine assets for the server tests, built once per test session (``server_assets``
fixture in conftest.py).

A freshly initialised ``micro`` checkpoint is exported with ``export.core.export_model`` (fp32, no
text encoder: the conditioning cache holds MiniLM vectors of every instrument name the server
tests use) to a real model directory; a real :class:`engine.library.StemLibrary` is built with it
from the synthetic dataset of ``test_pipeline_backend.write_dataset`` (3 tracks x 3 stems), plus a
second, smaller library (2 tracks) for ``set_library``. The server then runs the real
``engine.pipeline.Matcher`` on ONNX Runtime. Untrained weights: matches and beats are computed for
real but are not musically meaningful, so the tests assert on the contracts (schema, counts,
timing, determinism), not on retrieval accuracy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

#: every instrument name the server tests (and the server's defaults) ask for; without a text
#: encoder in the model directory other names are refused with bad_args
INSTRUMENTS = ["drums", "fretless bass", "warm pad", "kick drum", "upright bass", "electric bass", "drum kit",
               "electric piano", "bass"]


@dataclass
class ServerAssets:
    root: Path
    model: Path  # model directory (manifest.json, ONNX graphs, conditioning.npz)
    dataset: Path  # synthetic dataset the library was built from
    library: Path  # index .npz of the 3-track dataset
    library_small: Path  # index .npz of a 2-track subset (another real library for set_library)
    other_model_library: Path  # index built by another model (refused: fingerprint mismatch)
    build_s: float

    def backend(self, threads: int = 1):
        from engine.backends import load_backend

        return load_backend(self.model, kind="onnx-fp32", threads=threads)

    def load_library(self, path=None, fingerprint=None):
        from engine.library import StemLibrary

        return StemLibrary.load(path or self.library, expect_fingerprint=fingerprint)

    def cli_args(self) -> list[str]:
        """``--model`` / ``--library`` arguments for ``python -m server``."""
        return ["--model", str(self.model), "--library", str(self.library)]


def build_server_assets(root: Path) -> ServerAssets:
    import shutil

    import torch

    from engine.backends import load_backend
    from engine.library import build
    from export.core import export_model
    from training.checkpoint import save_checkpoint
    from training.config import get_config
    from training.model import StemJEPA

    from test_pipeline_backend import MicroBackend, write_dataset

    t0 = time.perf_counter()
    root = Path(root)
    torch.manual_seed(0)
    m = StemJEPA(get_config("micro"))
    for p in m.predictor.parameters():  # FiLM starts as identity: give the conditioning an effect
        p.data.add_(0.02 * torch.randn_like(p))
    save_checkpoint(root / "micro.pt", m, norm={"mean": -6.0, "std": 4.0},
                    text={"encoder": "all-MiniLM-L6-v2", "dim": 384}, labels=INSTRUMENTS)
    export_model(root / "micro.pt", root / "model", ("fp32",), text=False, log=lambda s: None)
    ds = write_dataset(root / "ds", n_tracks=3, seconds=8.0)
    backend = load_backend(root / "model", kind="onnx-fp32", threads=1)
    build(ds, backend, root / "lib.npz", progress=False, log=lambda s: None)
    small = root / "ds_small"
    small.mkdir()
    for t in ("track0", "track1"):
        shutil.copytree(ds / t, small / t)
    build(small, backend, root / "lib_small.npz", progress=False, log=lambda s: None)
    build(small, MicroBackend(seed=3), root / "lib_other.npz", progress=False, log=lambda s: None)
    return ServerAssets(root, root / "model", ds, root / "lib.npz", root / "lib_small.npz", root / "lib_other.npz",
                        time.perf_counter() - t0)

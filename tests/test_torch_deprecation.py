"""The torch backends keep TorchScript (engine/torch_backend.py says why) and silence nothing:
whatever torch.jit.load warns reaches the caller."""
import io
import warnings

import pytest

torch = pytest.importorskip("torch")


def _jit_load_warns() -> list[str]:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Identity()), buf)
    buf.seek(0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torch.jit.load(buf)
    return [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]


def test_torch_backend_does_not_silence_torch_jit_warnings():
    from engine.backends import load_backend
    from engine.manifest import ModelDirError, load_manifest

    try:
        man = load_manifest("engine/assets/model")
    except ModelDirError as e:
        pytest.skip(f"shipped model not built here: {e}")
    if not man.has_torch("bf16"):
        pytest.skip("the shipped model directory has no bf16 TorchScript files")
    expected = _jit_load_warns()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_backend(man, kind="torch-bf16")
    got = [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]
    if expected:  # torch warns on load: every graph's load passes the warning on
        assert sum(expected[0] in g for g in got) >= 4
    else:  # a torch that no longer warns: nothing to pass on
        assert not any("torch.jit" in g for g in got)

"""The shipped model, the shipped demo library and the demo track, as ``scripts/run.sh`` plays them:
the demo track is the mix of one library track's stems, and the live matcher must find that
track's stems for every instrument asked for, on nearly every hop."""
import collections
import json
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engine" / "assets" / "demo"


def test_live_matcher_finds_the_demo_tracks_own_stems():
    from engine.audio import load_audio
    from engine.backends import load_backend
    from engine.library import StemLibrary
    from engine.pipeline import Matcher

    b = load_backend(ROOT / "engine" / "assets" / "model", kind="onnx-fp32", threads=1)
    lib = StemLibrary.load(DEMO / "library.npz", expect_fingerprint=b.manifest.fingerprint)
    assert lib.keytempo is not None, "the demo library lacks key/tempo descriptors: python -m engine.library keytempo"
    own = json.loads((DEMO / "demo_track.json").read_text())["track_id"]
    x = load_audio(DEMO / "demo_track.flac", 16000)[: 20 * 16000]
    instruments = ["drums", "fretless bass", "warm pad"]
    m = Matcher(b, lib, instruments=instruments, k=3, drop_late=False)
    assert m.ranking == "model+keytempo"
    hits, hops = collections.Counter(), 0
    for r in m.run_array(x):
        if r.ready and r.signal:
            hops += 1
            for inst in instruments:
                hits[inst] += bool(r.matches[inst]) and r.matches[inst][0].track_id == own
    assert hops > 100
    for inst in instruments:
        assert hits[inst] >= 0.9 * hops, (inst, hits[inst], hops)

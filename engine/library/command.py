"""``python -m engine.library`` (``stemjepa-library``): build or inspect a stem library index.

``python -m engine.library build AUDIO_DIR OUT [--model DIR] [--device cpu] [--hop S]``,
``python -m engine.library info OUT`` and ``python -m engine.library grid OUT [--audio-dir DIR]``
(re-estimate the stems' beat grids and rewrite their paths relative to the audio root, keeping
the embeddings: for an index built before grids existed), ``python -m engine.library keytempo
OUT`` (add the key/tempo descriptors to an index built before them).
"""
from __future__ import annotations

import json
import os

from ..audio import AudioError
from ..cli import Parser, guarded, report
from ..manifest import DEFAULT_MODEL_DIR
from .builder import add_grids, add_keytempo, build
from .index import StemLibrary
from .store import LibraryError


@guarded("python -m engine.library")
def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m engine.library", description="Build or inspect a stem library index.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="index every stem of a folder",
                       description="Embed every stem of AUDIO_DIR (the dataset layout TRACK/STEM.wav + track.json, "
                       "or any folder of audio files, labels from file names) as 8-s segments with the model's "
                       "target encoder. Resumable: an interrupted build goes on where it stopped.")
    b.add_argument("audio_dir", help="folder of stems (dataset layout or plain audio files)")
    b.add_argument("out", help="index path (.npz, or a folder that gets library.npz)")
    b.add_argument("--model", default=None, metavar="DIR",
                   help="model directory (default: the shipped model, engine/assets/model)")
    b.add_argument("--device", default="cpu", help="cpu or cuda:N")
    b.add_argument("--kind", default=None, help="backend kind, e.g. onnx-int8 or torch-fp32 (default: fastest available)")
    b.add_argument("--threads", type=int, default=None,
                   help="inference threads (default: every CPU core of this machine)")
    b.add_argument("--hop", type=float, default=4.0, help="seconds between segment starts")
    b.add_argument("--batch", type=int, default=8, help="segments embedded per forward pass")
    b.add_argument("--min-rms-db", type=float, default=-60.0, metavar="DBFS",
                   help="segments quieter than this (RMS, dBFS) are not indexed")
    b.add_argument("--tokens", choices=["window", "stream"], default="window",
                   help="window: each 8-s segment encoded on its own (default); stream: the segments' tokens from "
                   "one causal stream over the stem, as the live path computes its queries (causal models)")
    b.add_argument("--no-resume", action="store_true",
                   help="start from scratch instead of keeping the stems an interrupted build already embedded")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="print an index summary", description="Print an index summary as JSON.")
    i.add_argument("index", help="index file (.npz)")
    g = sub.add_parser("grid", help="(re-)estimate every stem's tempo and beat grid and store its path relative "
                                    "to the audio folder; embeddings are kept",
                       description="Re-estimate the stems' beat grids and rewrite their paths relative to the audio "
                       "root, keeping the embeddings (for an index built before grids existed).")
    g.add_argument("index", help="index file (.npz)")
    g.add_argument("--audio-dir", default=None,
                   help="the audio folder the index was built from (default: the index's audio root)")
    kt = sub.add_parser("keytempo", help="add the key/tempo descriptors to an index built before them",
                        description="Compute every segment's tempo + key descriptor from the stems' audio "
                        "(engine/keytempo.py), keeping the embeddings.")
    kt.add_argument("index", help="index file (.npz)")
    kt.add_argument("--audio-dir", default=None,
                    help="the audio folder the index was built from (default: the index's audio root)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        args.model = args.model or str(DEFAULT_MODEL_DIR)
        args.threads = args.threads or max(1, os.cpu_count() or 1)
        if args.threads < 1 or args.batch < 1 or args.hop <= 0:
            ap.error("--threads and --batch must be >= 1, --hop > 0")
    try:
        if args.cmd == "info":
            print(json.dumps(StemLibrary.load(args.index).summary(), indent=1))
            return 0
        if args.cmd == "grid":
            add_grids(StemLibrary.load(args.index), args.audio_dir)
            return 0
        if args.cmd == "keytempo":
            add_keytempo(StemLibrary.load(args.index), args.audio_dir)
            return 0
        from ..backends import load_backend  # type: ignore

        backend = load_backend(args.model, device=args.device, kind=args.kind, threads=args.threads)
        build(args.audio_dir, backend, args.out, hop_s=args.hop, resume=not args.no_resume, batch=args.batch,
              min_rms_db=args.min_rms_db, progress=not args.no_progress, tokens=args.tokens)
        return 0
    except (LibraryError, AudioError, FileNotFoundError) as e:
        if "--debug" in (argv or []):
            raise
        return report("python -m engine.library", e)


"""The stem library: an index of 8-s segments of stems, searched by predicted embeddings.

Each *segment* is a window of one stem (``window_s`` = 8 s, a new one every ``hop_s`` = 4 s)
embedded by the model's **target encoder** and pooled exactly like the retrieval evaluation:
tokens ``(P, d)`` -> mean over patches -> layer norm (no affine, eps 1e-5) -> L2, giving a
``(d,)`` float32 unit vector. The index holds

* ``embeddings`` ``(S, d)`` float32, L2-normalised, one row per segment;
* per segment: the stem it belongs to and its offset in the stem (s);
* per stem: ``stem_id`` (unique and stable: the audio file's path relative to the audio folder,
  without extension, ``/``-separated, e.g. ``pop909-502/bass``), ``track_id``, ``label`` (free
  text, e.g. "electric bass"), ``category`` (e.g. "bass"), ``path`` (relative to the library's
  audio root, ``/``-separated), ``duration`` (s) and ``grid``: the stem's own tempo and beat grid
  estimated at build time (:mod:`engine.stemgrid`; null when the stem has no steady beat);
* ``info["audio_root"]``: the audio folder relative to the index file's folder, so an index and
  its audio can move together; :attr:`StemLibrary.audio_root` is its absolute form and
  :meth:`StemLibrary.stem_file` a stem's absolute path;
* ``keytempo`` ``(S, 188)`` float32: each segment's tempo + key descriptor
  (:mod:`engine.keytempo`), unit rows, or absent in an index built before them;
* the fingerprint of the model that built it, ``hop_s``, ``window_s``.

The package, one job a module (everything public is importable from ``engine.library``):

* :mod:`engine.library.index` -- :class:`StemLibrary` (construction, playable-stem lookups, the
  exact search, ``save``/``load``), :class:`Match`, :func:`pool_tokens`, :func:`set_blas_threads`;
* :mod:`engine.library.store` -- the file: ``save(path)`` writes one ``.npz`` (arrays + the
  metadata as a JSON string; loaded with ``allow_pickle=False``) and a ``.json`` copy of the
  metadata beside it for people to read; ``load(path, expect_fingerprint=...)`` refuses an index
  built by another model (:class:`LibraryError`, ``FORMAT``, ``VERSION``);
* :mod:`engine.library.stems` -- the stems of a folder: :func:`find_stems`, :class:`StemFile`,
  :func:`label_from_filename`;
* :mod:`engine.library.builder` -- :func:`build` (every stem of a folder, resumable),
  :func:`embed_stem`, :func:`segment_frames`, the per-stem beat grids
  (:class:`GridEstimator`, :func:`add_grids`) and the per-segment key/tempo descriptors
  (:func:`segment_keytempo`, :func:`add_keytempo`);
* :mod:`engine.library.command` -- the command line, :func:`main`.

The index and the store import neither the builder nor the command line.

CLI (:mod:`engine.library.command`): ``python -m engine.library build AUDIO_DIR OUT``, ``info``,
``grid`` and ``keytempo`` (``python -m engine.library --help``).
"""
from .builder import GridEstimator, add_grids, add_keytempo, build, embed_stem, segment_frames, segment_keytempo
from .command import main
from .index import FAISS_MIN_SEGMENTS, Match, StemLibrary, category_from_label, pool_tokens, set_blas_threads
from .stems import StemFile, find_stems, label_from_filename
from .store import FORMAT, VERSION, LibraryError

__all__ = ["FAISS_MIN_SEGMENTS", "FORMAT", "VERSION", "GridEstimator", "LibraryError", "Match", "StemFile",
           "StemLibrary", "add_grids", "add_keytempo", "build", "category_from_label", "embed_stem",
           "find_stems", "label_from_filename", "main", "pool_tokens", "segment_frames", "segment_keytempo",
           "set_blas_threads"]

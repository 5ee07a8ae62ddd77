"""What a server changes on a running :class:`engine.pipeline.Matcher` between two hops: the
instruments (their conditioning computed off the hop: :meth:`MatcherControls.prepare_instruments`,
then :meth:`~MatcherControls.apply_instruments`), ``k``, the stem library, the key/tempo weight of
the ranking and the category restriction. (The hop length, which moves the hop grid, is the
matcher's own: ``Matcher.set_hop``.)

:class:`MatcherControls` is mixed into the matcher, which sets what it reads and writes:
``backend``, ``d_model``, ``library``, ``instruments``, ``_cond``, ``_cats``, ``k``,
``restrict_category``, ``keytempo_weight``.
"""
from __future__ import annotations

from .library.index import StemLibrary
from .library.store import LibraryError


def manifest_get(backend, key, default=None):
    """Attribute ``key`` of a backend's manifest (``default`` without a manifest or attribute)."""
    m = getattr(backend, "manifest", None)
    return getattr(m, key, default) if m is not None else default


class MatcherControls:
    """The matcher's settings between two hops (the module docstring)."""

    def set_instruments(self, names) -> None:
        """Free-text instrument names (an empty list is allowed: no matches). Conditioning is
        computed here, once per change: ``apply_instruments(prepare_instruments(names))``."""
        self.apply_instruments(self.prepare_instruments(names))

    def prepare_instruments(self, names) -> tuple[list[str], object]:
        """The heavy half of :meth:`set_instruments` (text encoding), with no change of state, so
        that a server can run it off the hop and control threads: ``(clean names, conditioning)``."""
        if isinstance(names, str):
            names = [names]
        clean: list[str] = []
        for n in names:
            if not isinstance(n, str) or not n.strip():
                raise ValueError(f"instrument names must be non-empty strings, got {n!r}")
            n = " ".join(n.split())
            if n not in clean:
                clean.append(n)
        try:
            cond = self.backend.condition(clean) if clean else None
        except (ValueError, TypeError, KeyError):
            raise
        except Exception as e:  # e.g. no text encoder for an unknown name: a bad argument here
            raise ValueError(f"cannot condition on {clean}: {e}") from e
        return clean, cond

    def apply_instruments(self, prepared: tuple[list[str], object]) -> None:
        """Swap in what :meth:`prepare_instruments` computed (cheap; between two hops)."""
        clean, cond = prepared
        self.instruments, self._cond = list(clean), cond
        self._update_categories()

    def set_k(self, k: int) -> None:
        k = int(k)
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k

    def set_library(self, library: StemLibrary | None) -> None:
        """Swap the stem library (None: no matches). Refuses one built by another model or with
        another embedding width."""
        if library is not None:
            fp = manifest_get(self.backend, "fingerprint")
            if library.fingerprint is not None and fp is not None and library.fingerprint != fp:
                raise LibraryError("this stem library was built by another model (fingerprint "
                                   f"{library.fingerprint[:12]}... vs {str(fp)[:12]}...)")
            if len(library) and self.d_model is not None and library.dim != int(self.d_model):
                raise LibraryError(f"library embeddings are {library.dim}-d, the model's are {self.d_model}-d")
        self.library = library
        self._update_categories()

    def set_keytempo_weight(self, weight: float) -> None:
        """Weight ``a`` of the tempo + key descriptor: segments score ``(1 - a) * cos_model +
        a * cos_keytempo`` (0: the model alone, 1: the heuristic alone)."""
        a = float(weight)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"keytempo_weight must be in [0, 1], got {weight}")
        self.keytempo_weight = a

    @property
    def ranking(self) -> str:
        """How matches are ranked now: ``"model+keytempo"``, or ``"model"`` (weight 0, or a
        library without descriptors)."""
        lib = self.library
        fused = self.keytempo_weight > 0.0 and lib is not None and getattr(lib, "keytempo", None) is not None
        return "model+keytempo" if fused else "model"

    def set_restrict_category(self, on: bool) -> None:
        self.restrict_category = bool(on)

    def _update_categories(self) -> None:
        lib = self.library
        self._cats = [lib.category_of(n) if lib is not None else None for n in self.instruments]

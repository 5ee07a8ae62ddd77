"""Search scale: exact search over 10k and 100k random 192-d segments (prints timings; asserts
only correctness: every query is a library row, which must come back first with score 1)."""
import time

import numpy as np

from engine.library import StemLibrary, set_blas_threads


def test_search_scales_to_100k_segments():
    set_blas_threads(1)
    rng = np.random.default_rng(0)
    d = 192
    big = rng.standard_normal((100_000, d), dtype=np.float32)
    for n in (10_000, 100_000):
        e = big[:n]
        sid = [f"s{i // 25}" for i in range(n)]
        cats = [("bass", "drums", "vocals", "other")[(i // 25) % 4] for i in range(n)]
        lib = StemLibrary.from_arrays(e, sid, categories=cats, offsets=[4.0 * (i % 25) for i in range(n)])
        rows = rng.integers(0, n, 4)
        q = e[rows]
        for restrict in (None, [cats[r] for r in rows]):
            res = lib.search(q, 5, categories=restrict)
            for r, hits in zip(rows, res):
                assert hits[0].stem_id == sid[r] and abs(hits[0].offset - 4.0 * (r % 25)) < 1e-6
                assert abs(hits[0].score - 1.0) < 1e-5 and len({h.stem_id for h in hits}) == 5
            ts = []
            for _ in range(10):
                t = time.perf_counter()
                lib.search(q, 5, categories=restrict)
                ts.append(time.perf_counter() - t)
            print(f"\nsearch n={n} d={d} 4 queries k=5 {'per-category' if restrict else 'all'}: "
                  f"median {np.median(ts) * 1e3:.2f} ms, min {min(ts) * 1e3:.2f} ms")

"""Single-producer / single-consumer ring buffer of float32 audio samples.

The audio callback (producer) only copies into a preallocated array: :meth:`RingBuffer.write`
never allocates a sample buffer, never takes a lock and never blocks. When the buffer is full
the oldest samples are overwritten; if those samples had not been consumed yet (see
:meth:`RingBuffer.mark_read`) the overrun is counted.

The consumer (the matcher's worker thread) reads by *sample clock*: ``written`` is the number of
samples written since creation, a monotonic clock in samples (stream time = ``written / sr``).
Reading a range ``[start, end)`` copies it out and then re-checks the clock (seqlock style): if the
producer overwrote part of the range during the copy, the read is retried (or reported as lost),
so a reader never returns torn data.

Under CPython the producer publishes a write by rebinding one int (``_written``) after the copy;
the rebinding is atomic with respect to the GIL, which is all the ordering the reader relies on.
"""
from __future__ import annotations

import numpy as np


class RingOverwritten(RuntimeError):
    """The requested samples are no longer in the ring (overwritten by newer audio)."""


class RingBuffer:
    """Ring of ``capacity`` float32 mono samples (several input channels are averaged).

    Attributes (read them from any thread):

    * ``written`` -- samples written since creation (monotonic sample clock).
    * ``overruns`` -- write calls that overwrote samples the consumer had not read yet.
    * ``overrun_samples`` -- how many unread samples were lost that way.
    """

    def __init__(self, capacity: int):
        capacity = int(capacity)
        if capacity <= 0:
            raise ValueError(f"ring capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._written = 0  # producer-owned; rebinding publishes the write
        self._read_pos = 0  # consumer-owned: everything before it has been consumed
        self.overruns = 0
        self.overrun_samples = 0

    # ------------------------------------------------------------------ producer side
    @property
    def written(self) -> int:
        """Samples written so far (the sample clock), an int."""
        return self._written

    def write(self, samples: np.ndarray) -> None:
        """Copy ``samples`` into the ring (audio-callback safe).

        ``samples``: ``(n,)`` or ``(n, channels)`` array of any real dtype (converted to float32
        while copying); several channels are averaged, as ``engine.audio.to_mono`` does for files.
        If ``n > capacity`` only the newest ``capacity`` samples are kept. No sample buffer is
        allocated; no lock is taken.
        """
        if not isinstance(samples, np.ndarray):
            samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples[:, None]
        elif samples.ndim != 2:
            raise ValueError(f"ring takes (n,) or (n, channels) samples; got shape {samples.shape}")
        n = samples.shape[0]
        if n == 0:
            return
        cap = self.capacity
        w = self._written
        # unread samples pushed out by this write: [max(read_pos, old oldest), new oldest)
        lost = (w + n - cap) - max(self._read_pos, w - cap)
        if lost > 0:
            self.overruns += 1
            self.overrun_samples += lost
        if n > cap:
            samples = samples[n - cap:]
            w += n - cap
            n = cap
        i = w % cap
        first = min(n, cap - i)
        self._put(i, samples[:first])
        if first < n:
            self._put(0, samples[first:])
        self._written = w + n

    def _put(self, i: int, block: np.ndarray) -> None:
        """``block (m, channels)`` -> its channel mean into ``_buf[i:i + m]``, in place."""
        dst = self._buf[i:i + block.shape[0]]
        dst[:] = block[:, 0]
        channels = block.shape[1]
        if channels > 1:
            for c in range(1, channels):
                dst += block[:, c]
            dst *= np.float32(1.0 / channels)

    # ------------------------------------------------------------------ consumer side
    def mark_read(self, pos: int) -> None:
        """Consumer: every sample before clock position ``pos`` has been consumed (for overrun
        accounting only; reading never requires it)."""
        if pos > self._read_pos:
            self._read_pos = int(pos)

    @property
    def read_pos(self) -> int:
        return self._read_pos

    def oldest(self) -> int:
        """Clock position of the oldest sample still held."""
        return max(0, self._written - self.capacity)

    def read(self, start: int, end: int, out: np.ndarray | None = None) -> np.ndarray:
        """Copy samples ``[start, end)`` (clock positions) into ``out`` (or a new float32 array).

        Raises :class:`RingOverwritten` if part of the range is gone (or gets overwritten while
        copying), ``ValueError`` if ``end`` is in the future or the range is malformed.
        """
        start, end = int(start), int(end)
        n = end - start
        if n < 0:
            raise ValueError(f"bad range [{start}, {end})")
        if end > self._written:
            raise ValueError(f"range end {end} is beyond the samples written ({self._written})")
        if n > self.capacity:
            raise RingOverwritten(f"range of {n} samples exceeds the ring capacity {self.capacity}")
        if out is None:
            out = np.empty(n, dtype=np.float32)
        elif out.shape[0] < n:
            raise ValueError("output buffer too small")
        if n == 0:
            return out[:0]
        cap = self.capacity
        if start < self._written - cap:
            raise RingOverwritten(f"samples from {start} were overwritten (oldest held: {self._written - cap})")
        i = start % cap
        first = min(n, cap - i)
        out[:first] = self._buf[i:i + first]
        if first < n:
            out[first:n] = self._buf[:n - first]
        # seqlock check: did the producer lap the range while we copied?
        if start < self._written - cap:
            raise RingOverwritten(f"samples from {start} were overwritten while reading")
        return out[:n]

    def read_latest(self, n: int, out: np.ndarray | None = None, retries: int = 3) -> tuple[np.ndarray, int]:
        """The newest ``n`` samples (fewer if fewer were written) and the clock position just after
        the last one: ``(samples (m,), end)`` with ``m = min(n, written, capacity)``."""
        n = min(int(n), self.capacity)
        for _ in range(max(1, retries)):
            end = self._written
            start = max(0, end - n)
            try:
                return self.read(start, end, out), end
            except RingOverwritten:
                continue
        raise RingOverwritten("producer kept overwriting the requested range")

"""Audio input: a capture buffer fed by a sound-device callback or by a file replayed in time.

The producer (PortAudio's callback, or the replay thread) only *copies* a block into a
preallocated ring at the device rate and stamps its arrival time in a preallocated log; nothing is
allocated, no lock is taken. The worker thread drains the buffer, resamples to 16 kHz with a
streaming soxr resampler and writes into the matcher's ring (see :class:`Feeder`). Resampling in the
worker rather than the callback keeps the callback allocation-free; it adds no latency because the
worker drains right before every hop, and the latency we publish is measured from the arrival of
the *device-rate* samples (so the resampler's own delay is included).
"""
from __future__ import annotations

import threading
import time

import numpy as np

from engine.ring import RingBuffer, RingOverwritten

from . import config


class CaptureBuffer(RingBuffer):
    """The device-rate ring (``engine.ring.RingBuffer``: mono float32, channels averaged, written
    without allocating or locking) plus an arrival log and the worker's wake-up event.

    ``written`` counts samples since creation; ``arrivals`` holds ``(written_after_block, unix_time)``
    for the last ``log_len`` blocks; ``overruns`` counts blocks that overwrote samples the worker
    had not drained yet (``read_new`` marks what it drained).
    """

    def __init__(self, rate: float, seconds: float = config.CAPTURE_SECONDS, log_len: int = 4096):
        super().__init__(max(1024, int(rate * seconds)))
        self.rate = float(rate)
        self._log_pos = np.zeros(log_len, dtype=np.int64)
        self._log_t = np.zeros(log_len, dtype=np.float64)
        self._log_n = 0  # blocks logged (monotonic)
        self.ready = threading.Event()  # set after each block; the worker waits on it
        self.done = False  # producer finished (end of file)

    # producer --------------------------------------------------------------------------------
    def write(self, block: np.ndarray, now: float | None = None) -> None:
        """Copy a ``(n,)`` or ``(n, channels)`` block (channels averaged) and log its arrival."""
        if now is None:
            now = time.time()
        n = block.shape[0]
        if n == 0:
            return
        j = self._log_n % self._log_pos.shape[0]  # logged before the samples are published
        self._log_pos[j] = self.written + n
        self._log_t[j] = now
        self._log_n += 1
        super().write(block)
        self.ready.set()

    # consumer --------------------------------------------------------------------------------
    def read_new(self) -> tuple[np.ndarray, int]:
        """All samples written since the last call that are still held: ``(samples, end_position)``."""
        while True:
            end = self.written
            try:
                out = self.read(max(self.read_pos, end - self.capacity), end)
                break
            except RingOverwritten:  # the producer lapped the range while it was copied: take the newer one
                continue
        self.mark_read(end)
        return out, end

    def arrival_time(self, pos: int) -> float | None:
        """Unix time at which sample ``pos - 1`` (the sample just before clock position ``pos``)
        arrived, i.e. the arrival of the first logged block whose end is ``>= pos``."""
        nlog = self._log_n
        L = self._log_pos.shape[0]
        lo = max(0, nlog - L)
        # binary search over logged blocks [lo, nlog)
        a, b = lo, nlog
        while a < b:
            m = (a + b) // 2
            if self._log_pos[m % L] >= pos:
                b = m
            else:
                a = m + 1
        if a >= nlog:
            return None
        return float(self._log_t[a % L])


class Feeder:
    """Worker side: drains a :class:`CaptureBuffer`, resamples to 16 kHz, writes to the ring, and
    maps ring positions back to the arrival time of their audio."""

    def __init__(self, capture: CaptureBuffer, sr_out: int = config.SAMPLE_RATE):
        self.capture = capture
        self.sr_out = sr_out
        self.ratio = capture.rate / sr_out  # device samples per output sample
        self._stream = None
        if abs(capture.rate - sr_out) > 1e-6:
            import soxr

            self._stream = soxr.ResampleStream(capture.rate, sr_out, 1, dtype="float32", quality="HQ")
        self._flushed = False
        self.out_written = 0  # output samples produced (== samples written to the ring since start)
        self.ring_base = 0  # ring.written when out_written was 0

    def attach(self, ring) -> None:
        self.ring_base = ring.written - self.out_written

    def pump(self, ring) -> int:
        """Move everything captured so far into ``ring``; returns output samples written."""
        done = self.capture.done  # read before draining: nothing is written after done is set
        x, _ = self.capture.read_new()
        if self._stream is not None:
            if self._flushed or (x.size == 0 and not done):
                return 0
            y = self._stream.resample_chunk(x, last=done)
            self._flushed = done
        else:
            y = x
        if y.size:
            ring.write(y)
            self.out_written += y.shape[0]
        return int(y.size)

    def arrival_of_ring_pos(self, ring_pos: int) -> float | None:
        """Arrival (unix s) of the device sample that ring position ``ring_pos`` (exclusive end)
        was resampled from."""
        out_pos = ring_pos - self.ring_base
        if out_pos <= 0:
            return None
        dev_pos = int(np.ceil(out_pos * self.ratio - 1e-9))
        return self.capture.arrival_time(dev_pos)


# ---------------------------------------------------------------------------- sources
class FileSource:
    """Replays an audio file into a CaptureBuffer at its native rate, paced like a sound card
    (``speed`` 1 = real time, 2 = twice as fast, 0 = as fast as the worker consumes)."""

    kind = "file"

    def __init__(self, path, speed: float = 1.0, loop: bool = False, block_s: float = config.FILE_BLOCK_S):
        import soundfile as sf

        from engine.audio import AudioError, check_finite, to_mono

        self.path = str(path)
        try:
            data, rate = sf.read(self.path, dtype="float32", always_2d=True)
        except Exception as e:
            raise AudioError(f"{path}: cannot read audio ({e})") from e
        self.data = check_finite(to_mono(data), self.path)
        if len(self.data) == 0:
            raise AudioError(f"{path}: the file holds no audio frames (an empty or truncated recording)")
        self.rate = float(rate)
        self.speed = float(speed)
        self.loop = bool(loop)
        self.block = max(1, int(round(block_s * rate)))
        self.capture = CaptureBuffer(self.rate, seconds=max(config.CAPTURE_SECONDS, 4 * block_s))
        self.name = self.path
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.consumed = threading.Event()  # speed 0: set by the worker when it has caught up
        self.duration_s = len(self.data) / self.rate

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="file-replay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        pos = 0
        sent = 0  # samples written in total (for pacing across loops)
        n = len(self.data)
        fast = self.speed <= 0
        block = self.block
        if fast:  # write ~one hop at a time and wait for the worker
            block = max(block, int(self.rate * 0.16))
        while not self._stop.is_set():
            if pos >= n:
                if not self.loop or n == 0:
                    break
                pos = 0
            blk = self.data[pos:pos + block]
            if fast:
                self.consumed.clear()
                self.capture.write(blk)
                while not self.consumed.wait(0.05):
                    if self._stop.is_set():
                        return
            else:
                due = t0 + (sent + blk.shape[0]) / self.rate / self.speed
                delay = due - time.perf_counter()
                if delay > 0 and self._stop.wait(delay):
                    return
                self.capture.write(blk)
            pos += blk.shape[0]
            sent += blk.shape[0]
        self.capture.done = True
        self.capture.ready.set()

    def stop(self) -> None:
        self._stop.set()
        self.consumed.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def info(self) -> dict:
        return {"kind": "file", "name": self.name, "rate": self.rate, "speed": self.speed, "loop": self.loop}


class DeviceSource:
    """A sound-card input stream whose callback only copies into the CaptureBuffer, supervised:
    :meth:`supervise` (called by the server's watchdog a few times a second) notices a stream
    that delivers nothing for ``config.INPUT_TIMEOUT_S`` ("stalled") or that PortAudio closed
    (a device unplugged: "lost"), reopens it every ``config.INPUT_RETRY_S`` until audio flows
    again ("resumed"), and counts PortAudio's overflow flags ("glitches").

    ``stream_factory(callback, finished_callback)`` makes the stream (default: a sounddevice
    ``InputStream`` on ``device``); tests pass one that drives the callback themselves."""

    kind = "device"

    def __init__(self, device=None, rate: float | None = None, blocksize: int = config.DEVICE_BLOCKSIZE,
                 stream_factory=None, name: str | None = None):
        self.device = device
        self.blocksize = blocksize
        if stream_factory is None:
            import sounddevice as sd  # raises OSError when PortAudio is missing

            info = sd.query_devices(device, "input")  # raises when there is no input device
            name = str(info["name"])
            rate = float(rate or info["default_samplerate"])
            stream_factory = self._sounddevice_stream
        if rate is None:
            raise ValueError("a stream factory needs an explicit rate")
        self.name = str(name if name is not None else device)
        self.rate = float(rate)
        self.capture = CaptureBuffer(self.rate)
        self.speed = None
        self.loop = False
        self.state = "ok"
        self.stalls = self.reopens = 0
        self.status_flags = 0  # PortAudio overflow/underflow flags reported to the callback
        self._factory = stream_factory
        self._lost = False
        self._started = False
        self._seen = 0  # capture.written at the last supervise()
        self._last_audio = time.monotonic()
        self._next_retry = 0.0
        self._stream = self._factory(self._callback, self._finished)

    def _sounddevice_stream(self, callback, finished_callback):
        import sounddevice as sd

        return sd.InputStream(device=self.device, channels=1, samplerate=self.rate, dtype="float32",
                              blocksize=self.blocksize, latency="low", callback=callback,
                              finished_callback=finished_callback)

    def _callback(self, indata, frames, t, status):  # PortAudio thread: copy only
        if status:
            self.status_flags += 1
        self.capture.write(indata)

    def _finished(self):  # PortAudio: the stream stopped by itself (device gone, host error)
        if self._started:
            self._lost = True

    def start(self) -> None:
        self._started = True
        self._last_audio = time.monotonic()
        self._stream.start()

    def stop(self) -> None:
        self._started = False
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:
            pass

    def supervise(self, now: float | None = None) -> list[str]:
        """Check the stream; returns the events since the last call (each a line for the log)."""
        now = time.monotonic() if now is None else now
        events: list[str] = []
        w = self.capture.written
        if w != self._seen:
            self._seen, self._last_audio = w, now
            if self.state != "ok":
                self.state = "ok"
                self._lost = False
                events.append(f"resumed: audio flows again from {self.name}")
            return events
        if not self._started:
            return events
        quiet = now - self._last_audio
        if self.state == "ok" and (self._lost or quiet > config.INPUT_TIMEOUT_S):
            self.state = "lost" if self._lost else "stalled"
            self.stalls += 1
            self._next_retry = now
            events.append(f"{self.state}: no audio from {self.name} for {quiet:.1f} s; reopening it every "
                          f"{config.INPUT_RETRY_S:g} s until it returns")
        if self.state != "ok" and now >= self._next_retry:
            self._next_retry = now + config.INPUT_RETRY_S
            try:
                self._reopen()
                events.append(f"reopened the input stream of {self.name}")
            except Exception as e:
                events.append(f"cannot reopen {self.name} yet: {type(e).__name__}: {e}")
        return events

    def _reopen(self) -> None:
        old, self._stream = self._stream, None
        try:
            old.abort() if hasattr(old, "abort") else old.stop()
            old.close()
        except Exception:
            pass
        self._lost = False
        self._stream = self._factory(self._callback, self._finished)
        self._stream.start()
        self.reopens += 1

    def health(self) -> dict:
        return {"state": self.state, "stalls": self.stalls, "reopens": self.reopens, "glitches": self.status_flags}

    def info(self) -> dict:
        return {"kind": "device", "name": self.name, "rate": self.rate, "speed": None, "loop": False,
                "state": self.state}


def find_input_device():
    """The default input device's index, or raise RuntimeError with the reason there is none."""
    try:
        import sounddevice as sd
    except (OSError, ImportError) as e:
        raise RuntimeError(f"no PortAudio ({e})")
    try:
        devs = sd.query_devices()
        default = sd.default.device[0]
        if default is not None and default >= 0 and devs[default]["max_input_channels"] > 0:
            return default
        for i, d in enumerate(devs):
            if d["max_input_channels"] > 0:
                return i
    except Exception as e:
        raise RuntimeError(f"cannot query sound devices ({e})")
    raise RuntimeError("no audio input device")

import threading
import tracemalloc

import numpy as np
import pytest

from engine.ring import RingBuffer, RingOverwritten

MOD = 1 << 20  # float32 holds these integers exactly


def ramp(start, n):
    return (np.arange(start, start + n) % MOD).astype(np.float32)


def test_write_read_wraparound():
    r = RingBuffer(10)
    r.write(ramp(0, 7))
    r.write(ramp(7, 7))  # wraps
    assert r.written == 14
    x, end = r.read_latest(10)
    assert end == 14 and np.array_equal(x, ramp(4, 10))
    assert np.array_equal(r.read(5, 9), ramp(5, 4))
    with pytest.raises(RingOverwritten):
        r.read(3, 9)
    with pytest.raises(ValueError):
        r.read(10, 15)  # the future
    x, end = r.read_latest(3)
    assert np.array_equal(x, ramp(11, 3))


def test_oversized_write_keeps_newest_and_accepts_2d_and_other_dtypes():
    r = RingBuffer(8)
    r.write(ramp(0, 20).astype(np.float64)[:, None])
    assert r.written == 20
    x, _ = r.read_latest(100)
    assert x.dtype == np.float32 and np.array_equal(x, ramp(12, 8))
    with pytest.raises(ValueError):
        r.write(np.zeros((4, 2, 1), dtype=np.float32))


def test_channels_are_averaged_like_files():
    """One channel rule for live input and files: the channel mean (engine.audio.to_mono)."""
    from engine.audio import to_mono

    r = RingBuffer(6)
    x = np.random.default_rng(4).standard_normal((10, 3)).astype(np.float32)  # wraps, keeps the newest 6
    r.write(x[:7])
    r.write(x[7:])
    got, _ = r.read_latest(6)
    np.testing.assert_allclose(got, to_mono(x)[-6:], atol=1e-6)


def test_capture_buffer_is_the_engine_ring():
    """server.capture's device-rate buffer is an engine.ring.RingBuffer plus an arrival log."""
    from server.capture import CaptureBuffer

    c = CaptureBuffer(1000.0, seconds=1.024)  # capacity 1024
    assert isinstance(c, RingBuffer) and c.capacity == 1024
    c.write(np.stack([ramp(0, 300), ramp(0, 300) + 2], axis=1), now=10.0)  # two channels: mean = ramp + 1
    c.write(ramp(301, 200), now=11.0)
    x, end = c.read_new()
    assert end == 500 and np.array_equal(x[:300], ramp(1, 300)) and np.array_equal(x[300:], ramp(301, 200))
    assert c.read_new()[0].size == 0 and c.overruns == 0
    assert c.arrival_time(300) == 10.0 and c.arrival_time(301) == 11.0 and c.arrival_time(501) is None
    for k in range(3):  # 1536 samples the worker did not drain: the oldest 512 are lost
        c.write(ramp(500 + 512 * k, 512), now=12.0 + k)
    x, end = c.read_new()
    assert end == 2036 and np.array_equal(x, ramp(1012, 1024)) and c.overruns == 1


def test_overrun_counting():
    r = RingBuffer(100)
    r.write(ramp(0, 80))
    r.mark_read(50)
    r.write(ramp(80, 60))  # oldest becomes 40 -> nothing unread lost? read_pos 50 > 40
    assert r.overruns == 0
    r.write(ramp(140, 20))  # oldest becomes 60: samples 50..59 lost unread
    assert r.overruns == 1 and r.overrun_samples == 10
    r.write(ramp(160, 5))  # 60..64 lost
    assert r.overruns == 2 and r.overrun_samples == 15
    r.mark_read(165)
    r.write(ramp(165, 100))  # exactly capacity, nothing unread lost
    assert r.overruns == 2


def test_write_does_not_allocate_sample_buffers():
    r = RingBuffer(48000)
    block = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    r.write(block)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(300):
            r.write(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 4096  # a copy of the block would be 16 KiB


def test_threaded_producer_consumer_never_sees_torn_data():
    cap = 4096
    r = RingBuffer(cap)
    total = 400_000
    stop = threading.Event()
    errors = []

    def producer():
        rng = np.random.default_rng(1)
        pos = 0
        while pos < total:
            n = int(rng.integers(1, 700))
            r.write(ramp(pos, n))
            pos += n
        stop.set()

    checked = 0
    t = threading.Thread(target=producer)
    t.start()
    out = np.empty(1024, dtype=np.float32)
    while not stop.is_set() or checked == 0:
        try:
            x, end = r.read_latest(1024, out=out)
        except RingOverwritten:
            continue
        if len(x):
            # the newest samples must be exactly the consecutive ramp ending at `end`
            if not np.array_equal(x, ramp(end - len(x), len(x))):
                errors.append(end)
            checked += 1
    t.join()
    assert not errors
    assert checked > 0
    assert r.written >= total


def test_threaded_sequential_consumer_gets_every_sample():
    # a consumer that keeps up (large ring) receives the exact stream, no overruns
    r = RingBuffer(1 << 16)
    total = 300_000
    done = threading.Event()

    def producer():
        pos = 0
        rng = np.random.default_rng(2)
        while pos < total:
            n = int(rng.integers(64, 512))
            n = min(n, total - pos)
            r.write(ramp(pos, n))
            pos += n
            if pos % 7 == 0:
                threading.Event().wait(0.0001)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    got = []
    pos = 0
    while pos < total:
        end = r.written
        if end > pos:
            got.append(r.read(pos, end).copy())
            pos = end
            r.mark_read(pos)
    t.join()
    stream = np.concatenate(got)
    assert np.array_equal(stream, ramp(0, total))
    assert r.overruns == 0

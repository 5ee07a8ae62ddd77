"""--midi without any MIDI system (no JACK server, no ALSA sequencer): the server says so and runs
on. (Runs after test_midi_jack.py has stopped its JACK server; skipped where MIDI works.)"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rtmidi")
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("JACK_NO_START_SERVER", "1")


def test_midi_unavailable_is_reported_and_server_continues(tmp_path, server_assets):
    """Without a MIDI system (no JACK server, no ALSA sequencer) --midi says so and runs on."""
    from server.midi import MidiUnavailable, open_virtual_output

    try:
        out, _ = open_virtual_output("probe unavailable")
        out.close_port()
        pytest.skip("a MIDI system is available here")
    except MidiUnavailable:
        pass
    from server.testing import write_click_track

    wav = tmp_path / "click.wav"
    write_click_track(wav, seconds=1.0)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "server", *server_assets.cli_args(), "--instruments", "drums",
                        "--midi", "--input", str(wav), "--speed", "0",
                        "--pub", "tcp://127.0.0.1:25657", "--ctl", "tcp://127.0.0.1:25658"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "MIDI unavailable" in r.stderr and "end of input" in r.stderr

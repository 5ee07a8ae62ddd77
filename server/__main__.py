"""``python -m server``: the live accompaniment matcher.

With no argument: the shipped model, the demo library, and the default sound input -- or, when
there is none (no PortAudio, no input device), the demo track replayed in real time (looping).
Ctrl-C / SIGTERM stop it cleanly (exit status 0).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from engine.cli import Parser, add_logging, guarded, log_level, report

from . import config
from .console import check_address

log = logging.getLogger("server")


def parse_args(argv=None):
    ap = Parser(prog="python -m server", description=__doc__)
    ap.add_argument("--device", default="cpu", help="inference device: cpu or cuda:N")
    ap.add_argument("--model", default=None, metavar="DIR",
                    help="model directory (default: the shipped model, engine/assets/model)")
    ap.add_argument("--library", default=None, metavar="PATH",
                    help="stem library index (default: the demo library, engine/assets/demo/library.npz)")
    ap.add_argument("--library-root", action="append", default=[], metavar="DIR",
                    help="a folder under which clients may open libraries with set_library (repeatable; the "
                         "shipped demo's folder is always allowed; every other path is refused)")
    ap.add_argument("--watchdog", type=float, default=config.WATCHDOG_S, metavar="S",
                    help="a hop worker that makes no progress for S seconds makes status say \"stalled\"; after "
                         f"2*S the server exits with status {config.EXIT_STALLED} (0: off) (default: %(default)s)")
    ap.add_argument("--input", default=None, metavar="DEVICE|FILE",
                    help="audio file to replay, or sound device (index or name) (default: the default input "
                         "device, else the demo track)")
    ap.add_argument("--instruments", default=",".join(config.DEFAULT_INSTRUMENTS),
                    help='comma-separated free-text instrument names (default "%(default)s")')
    ap.add_argument("--k", type=int, default=config.DEFAULT_K, help=f"matches per instrument, 1..{config.MAX_K}")
    ap.add_argument("--signal-threshold", type=float, default=config.SIGNAL_THRESHOLD_DB, metavar="DBFS",
                    help="input level (RMS over the window, dBFS) below which the input counts as silence: "
                    "no matches, no tempo, no beats")
    ap.add_argument("--hop", type=float, default=config.DEFAULT_HOP_MS, metavar="MS",
                    help="hop in ms, rounded to a multiple of 20 ms")
    ap.add_argument("--min-bpm", type=float, default=config.BPM_RANGE[0],
                    help="slowest tempo the beat tracker considers")
    ap.add_argument("--max-bpm", type=float, default=config.BPM_RANGE[1],
                    help="fastest tempo the beat tracker considers; a narrower range "
                         "avoids half/double-tempo errors when the style is known")
    ap.add_argument("--restrict-category", action=argparse.BooleanOptionalAction, default=config.RESTRICT_CATEGORY,
                    help="search each instrument only among the library's stems of its category (bass, drums, "
                    "vocals, other; a category the library lacks: the whole library) (default: on)")
    ap.add_argument("--keytempo-weight", type=float, default=None, metavar="A",
                    help="weight of the tempo + key descriptor in the ranking, 0..1: a stem scores (1 - A) x the "
                    "model's cosine + A x the descriptor's (default: the model's own; 0: the model alone)")
    ap.add_argument("--pub", default=config.DEFAULT_PUB, metavar="ADDR", help="PUB address")
    ap.add_argument("--ctl", default=config.DEFAULT_CTL, metavar="ADDR", help="control ROUTER address")
    ap.add_argument("--speed", type=float, default=1.0,
                    help="file replay speed: 1 real time, 2 twice as fast, 0 as fast as possible")
    ap.add_argument("--loop", action="store_true", help="loop the input file instead of exiting at its end")
    ap.add_argument("--midi", action="store_true", help="MIDI clock + beat notes on a virtual port")
    ap.add_argument("--midi-channel", type=int, default=config.MIDI_CHANNEL, help="beat note channel, 1..16")
    ap.add_argument("--midi-note", type=int, default=config.MIDI_NOTE, help="beat note number, 0..127")
    ap.add_argument("--midi-port", default=config.MIDI_PORT_NAME, help="virtual MIDI port name")
    ap.add_argument("--no-beat", choices=("hold", "stop"), default=config.MIDI_NO_BEAT,
                    help="what the MIDI clock does while the tracker hears no beat (silence, noise, a steady "
                    "tone): hold = keep ticking at the last tempo, stop = send Stop and tick again from the "
                    f"next downbeat once beats return (default {config.MIDI_NO_BEAT}; set_midi changes it)")
    ap.add_argument("--threads", type=int, default=1, help="inference threads")
    ap.add_argument("--curve-keys", default=None, metavar="DIR",
                    help="directory with CURVE keys (python -m server.keys DIR); required to bind non-loopback "
                    "(default: none, plain TCP on loopback)")
    add_logging(ap)
    ap.add_argument("--status-every", type=float, default=5.0, metavar="S",
                    help="when stderr is not a terminal: seconds between plain status log lines (0: none)")
    from .bridge import add_arguments as add_bridge_arguments

    add_bridge_arguments(ap)  # --osc, --link, --link-mode, --link-quantum (server/bridge.py)
    a = ap.parse_args(argv)
    if a.speed < 0:
        ap.error("--speed must be >= 0")
    if not 1 <= a.midi_channel <= 16 or not 0 <= a.midi_note <= 127:
        ap.error("--midi-channel must be 1..16 and --midi-note 0..127")
    if not config.HOP_MS_RANGE[0] <= a.hop <= config.HOP_MS_RANGE[1]:
        ap.error(f"--hop must be within {config.HOP_MS_RANGE[0]}..{config.HOP_MS_RANGE[1]} ms")
    if not 1 <= a.k <= config.MAX_K:
        ap.error(f"--k must be 1..{config.MAX_K}")
    if a.threads < 1:
        ap.error("--threads must be >= 1")
    if not (a.watchdog == 0 or 0.5 <= a.watchdog <= 3600):
        ap.error("--watchdog must be 0 (off) or 0.5..3600 seconds")
    for r in a.library_root:
        if not Path(r).is_dir():
            ap.error(f"--library-root {r}: not a folder")
    if a.status_every < 0:
        ap.error("--status-every must be >= 0")
    if not 20 <= a.min_bpm < a.max_bpm <= 400:
        ap.error("need 20 <= --min-bpm < --max-bpm <= 400")
    for flag, addr in (("--pub", a.pub), ("--ctl", a.ctl)):
        why = check_address(flag, addr)
        if why:
            ap.error(why)
    if a.pub == a.ctl:
        ap.error("--pub and --ctl must be different addresses")
    a.instrument_list = [s.strip() for s in a.instruments.split(",") if s.strip()]
    if not a.instrument_list:
        ap.error("--instruments is empty")
    if len(a.instrument_list) > config.MAX_INSTRUMENTS:
        ap.error(f"--instruments names {len(a.instrument_list)}; at most {config.MAX_INSTRUMENTS}")
    a.model = a.model or str(config.DEFAULT_MODEL_DIR)
    a.library = a.library or str(config.DEFAULT_LIBRARY)
    return a


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def check_assets(model: Path, library: Path) -> None:
    """Raise ConfigError naming every missing input (model directory, library index) and the
    command that builds it."""
    from .app import ConfigError

    problems = []
    default_model = model.resolve() == config.DEFAULT_MODEL_DIR.resolve()
    if not (model / "manifest.json").is_file() and not (model / "packed.json").is_file():
        what = "the default model directory" if default_model else "the model directory"
        problems.append(
            f"{what} {_rel(model)} is missing (no manifest.json).\n"
            f"  Build it from a checkpoint: python -m export CHECKPOINT {_rel(model)} --precision fp32 int8\n"
            f"  (scripts/rebuild_default_model.sh trains one and writes {_rel(config.DEFAULT_MODEL_DIR)})\n"
            f"  or pass --model DIR.")
    if not library.is_file():
        default_lib = library.resolve() == config.DEFAULT_LIBRARY.resolve()
        what = "the default stem library index" if default_lib else "the stem library index"
        src = config.DEFAULT_LIBRARY.parent / "library" if default_lib else Path("STEMS_DIR")
        problems.append(
            f"{what} {_rel(library)} is missing.\n"
            f"  Build it with the model: python -m engine.library build {_rel(src)} {_rel(library)} "
            f"--model {_rel(model)}\n"
            + ("" if default_lib else "  (STEMS_DIR holds TRACK/STEM.wav + TRACK/track.json)\n")
            + "  or pass --library PATH.")
    if problems:
        raise ConfigError("cannot start:\n" + "\n".join(problems))


def ensure_model_forms(model: Path) -> Path:
    """A packed model directory (packed.json: fp16 weights only) gets its ONNX/TorchScript forms
    built once into the cache, at start-up, before any audio flows (export.cache)."""
    if (model / "manifest.json").is_file() or not (model / "packed.json").is_file():
        return model
    from engine.manifest import ModelDirError, resolve_model_dir

    from .app import ConfigError

    try:
        return resolve_model_dir(model)
    except ModelDirError:
        pass
    from export.cache import ensure_built

    try:
        return ensure_built(model, log=lambda m: print(m, file=sys.stderr, flush=True))
    except Exception as e:  # ModelDirError, ExportError: a clear start-up error, never a traceback
        raise ConfigError(f"cannot start: {e}") from e


def build_engine(a):
    """(matcher, backend name, library loader)."""
    from .app import ConfigError

    model, lib_path = Path(a.model), Path(a.library)
    check_assets(model, lib_path)
    model = ensure_model_forms(model)
    from engine.backends import BackendError, load_backend
    from engine.library import LibraryError
    from engine.manifest import ModelDirError
    from engine.pipeline import Matcher

    try:
        backend = load_backend(str(model), device=a.device, threads=a.threads)
    except (BackendError, ModelDirError) as e:
        raise ConfigError(f"cannot load the model directory {_rel(model)}: {e}")
    from .app import library_loader

    loader = library_loader(backend.manifest.fingerprint)

    try:
        lib = loader(str(lib_path))
    except LibraryError as e:
        raise ConfigError(f"cannot use the stem library {_rel(lib_path)}: {e}\n  Rebuild it with this model: "
                          f"python -m engine.library build STEMS_DIR {_rel(lib_path)} --model {_rel(model)}")
    if not len(lib):
        raise ConfigError(f"the stem library {_rel(lib_path)} holds no segments: there is nothing to match.\n"
                          f"  Rebuild it from a folder of stems: python -m engine.library build STEMS_DIR {_rel(lib_path)}")
    try:
        m = Matcher(backend, lib, instruments=a.instrument_list, k=a.k, hop_ms=a.hop,
                    signal_threshold_db=a.signal_threshold,
                    window_s=config.DEFAULT_WINDOW_S, restrict_category=a.restrict_category,
                    keytempo_weight=a.keytempo_weight,
                    tracker_kw={"min_bpm": a.min_bpm, "max_bpm": a.max_bpm})
    except ValueError as e:  # e.g. an instrument name the model cannot condition on (no text encoder)
        raise ConfigError(f"cannot start the matcher: {e}")
    return m, backend.name, loader


def build_source(a):
    from .capture import DeviceSource, FileSource, find_input_device

    if a.input is None:
        try:
            dev = find_input_device()
            src = DeviceSource(dev)
            log.info("input: sound device %r at %g Hz", src.name, src.rate)
            return src, False
        except Exception as e:
            track = config.DEMO_TRACK
            if not track.is_file():
                from .app import ConfigError

                raise ConfigError(f"no audio input ({e}) and no demo track at {track}; pass --input FILE")
            log.warning("no audio input (%s): replaying the demo track %s in real time, looping", e, track)
            return FileSource(track, speed=a.speed, loop=True), False
    if Path(a.input).is_file():
        src = FileSource(a.input, speed=a.speed, loop=a.loop)
        log.info("input: replaying %s (%.1f s) at %s", a.input, src.duration_s,
                 "full speed" if a.speed == 0 else f"{a.speed:g}x real time")
        return src, not a.loop
    if looks_like_path(a.input):
        from .app import ConfigError

        raise ConfigError(f"--input {a.input}: no such file\n  give an audio file that exists, or a sound device "
                          "by index or name (python -m sounddevice lists them)")
    dev = int(a.input) if a.input.isdigit() else a.input
    src = DeviceSource(dev)
    log.info("input: sound device %r at %g Hz", src.name, src.rate)
    return src, False


def started_line(srv, a) -> str:
    """The start-up log line. The settings are the server's, read from its matcher (their one
    owner, which cleans the names, drops repeats and rounds the hop), never the command line's."""
    hop_ms = srv.hop_ms
    rounded = f" (asked {a.hop:g} ms, rounded to 20-ms steps)" if abs(hop_ms - a.hop) > 1e-6 else ""
    return (f"backend {srv.backend_name} on {srv.device}; publishing on {a.pub}, control on {a.ctl}; "
            f"instruments {srv.instruments}, k={srv.k}, hop {hop_ms:g} ms{rounded}")


def looks_like_path(text: str) -> bool:
    """An --input that names a file (a separator, or an audio file extension), not a device."""
    from engine.audio import AUDIO_EXTENSIONS

    return "/" in text or "\\" in text or Path(text).suffix.lower() in AUDIO_EXTENSIONS or Path(text).exists()


@guarded("python -m server")
def main(argv=None) -> int:
    a = parse_args(argv)
    debug = getattr(a, "debug", False)
    console = None
    if not a.quiet:
        from .console import StatusLine

        console = StatusLine.for_stderr(every_s=a.status_every)
    handler = console.log_handler() if console is not None else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    logging.basicConfig(level=log_level(a), handlers=[handler], force=True)
    from .app import ConfigError, Server

    stop_requested = []
    server_box = []

    def on_signal(signum, frame):
        stop_requested.append(signum)
        if server_box:
            server_box[0].stop()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        matcher, backend_name, loader = build_engine(a)
        source, exit_at_end = build_source(a)
        midi, midi_error = None, None
        if a.midi:
            from .midi import MidiClock, MidiUnavailable

            try:
                midi = MidiClock(port_name=a.midi_port, channel=a.midi_channel, note=a.midi_note, no_beat=a.no_beat)
                log.info("MIDI: clock and beat notes (channel %d, note %d) on virtual port %r (%s)",
                         a.midi_channel, a.midi_note, a.midi_port, midi.api)
            except MidiUnavailable as e:
                midi_error = str(e)
                log.warning("MIDI unavailable, continuing without MIDI: %s", e)
        srv = Server(matcher, source, backend_name=backend_name, device=a.device, pub_addr=a.pub, ctl_addr=a.ctl,
                     library_path=a.library, library_loader=loader, library_roots=a.library_root,
                     curve_keys=a.curve_keys, midi=midi, exit_at_end=exit_at_end, watchdog_s=a.watchdog)
        srv.midi_error = midi_error
    except KeyboardInterrupt:
        log.info("interrupted during start-up")
        return 0
    except Exception as e:  # ConfigError and anything else: one line and a hint, exit 2
        if debug:
            raise
        return report("python -m server", e)
    server_box.append(srv)
    try:
        srv.start()
    except Exception as e:
        srv.close()
        if debug:
            raise
        return report("python -m server", e)
    log.info("%s", started_line(srv, a))
    if console is not None:
        console.start(a.pub, curve_keys=a.curve_keys)
    from .bridge import start as start_bridges

    try:
        bridges = start_bridges(a, srv)  # OSC / Link: subscribers of the PUB stream just bound
    except ConfigError as e:
        srv.close()
        log.error("%s", e)
        return 2
    try:
        while not srv.wait(0.2):
            pass
    finally:
        bridges.stop()
        if console is not None:
            console.stop()
        srv.close()
    if srv.stuck:  # a thread stuck in the engine: leave now, do not wait on it at interpreter exit
        log.error("stopped: %s did not stop; exiting with status %d", ", ".join(srv.stuck), srv.exit_code)
        logging.shutdown()
        os._exit(srv.exit_code)
    if srv.exit_code:
        log.error("stopped: the hop worker stalled (exit status %d)", srv.exit_code)
    elif stop_requested:
        log.info("stopped by signal; clean shutdown")
    else:
        log.info("finished: end of input")
    return srv.exit_code


if __name__ == "__main__":
    sys.exit(main())

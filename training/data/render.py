"""Render MIDI corpora into the dataset layout (one stem per GM family, drums = channel 10).

Layout written (training/data/README.md): ``OUT/<track_id>/<stem_id>.wav`` (16 kHz mono 16-bit) and
``OUT/<track_id>/track.json``; plus ``OUT/splits.json`` (song-grouped train/validation) and
``OUT/render_report.json`` (what was rendered, what was skipped and why).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import gm
from .midi import MidiError, Song, group_of, read_pop909_beats, read_song, stable_hash

SR = 16000
SILENT_RMS = 3e-4  # a stem quieter than this over the whole excerpt (about -70 dBFS) is dropped
PREROLL = 2.0  # seconds rendered before an excerpt so that sustained notes and controllers settle
TAIL = 1.0  # seconds after the last note of a full-song render
PEAK = 0.98  # stems are scaled together so that the mix stays below this peak
ASSIGN_CORPORA = ("pop909", "nottingham")
#: corpora with rules of their own; a folder is one of them only when declared (never by its name)
CORPORA = ("touhou", "pop909", "nottingham", "groove")
PLAIN = "midi"  # any other folder: no rules, instruments as the files say
MANIFEST = "corpus.json"  # {"corpus": "pop909"} in a MIDI folder declares its corpus
MIDI_SUFFIXES = (".mid", ".midi")


class CorpusError(ValueError):
    pass


def declared_corpus(midi_dir: str | Path, corpus: str | None = None) -> str:
    """The corpus of a MIDI folder: ``corpus`` when given, else the ``corpus`` field of
    ``MIDI_DIR/corpus.json``, else :data:`PLAIN` (a folder's or a file's name never decides)."""
    midi_dir = Path(midi_dir)
    source = "--corpus"
    if corpus is None:
        m = midi_dir / MANIFEST
        if not m.is_file():
            return PLAIN
        try:
            doc = json.loads(m.read_text())
            corpus = doc["corpus"] if isinstance(doc, dict) else None
        except (OSError, ValueError, KeyError) as e:
            raise CorpusError(f"{m}: unreadable corpus manifest ({e}); it must be {{\"corpus\": NAME}}") from e
        source = str(m)
    corpus = str(corpus).strip().lower()
    if corpus not in CORPORA + (PLAIN,):
        raise CorpusError(f"{source}: unknown corpus {corpus!r}; choose from {', '.join(CORPORA + (PLAIN,))}")
    return corpus


@dataclass
class Job:
    path: str  # MIDI file
    corpus: str
    rel: str  # path from the corpus folder, for ids and reports
    track_id: str
    group: str


def slug(s: str, n: int = 40) -> str:
    s = re.sub(r"[^0-9a-z]+", "-", s.lower()).strip("-")
    return s[:n].strip("-") or "x"


def find_jobs(midi_dir: str | Path, limit: int | None = None, seed: int = 0, corpus: str | None = None,
              left_out: list | None = None) -> list[Job]:
    """Every usable MIDI file under ``midi_dir`` (recursively), as render jobs.

    The folder's corpus is declared (:func:`declared_corpus`: ``corpus``, or a ``corpus.json`` in
    the folder), never guessed from names. Corpus rules: Nottingham's melody-only/chords-only
    folders are duplicates of ``MIDI/`` and are left out; Groove (drums only, one stem) is left out
    whole; POP909 and Nottingham get their instruments assigned, POP909 its beat annotations.
    Every file left out is appended to ``left_out`` as ``{"track_id", "source", "reason"}``.
    ``limit`` keeps the first N files of a seeded shuffle (stable: the same seed and folder always
    give the same files).
    """
    midi_dir = Path(midi_dir)
    if not midi_dir.is_dir():
        raise FileNotFoundError(f"{midi_dir}: no such folder")
    corpus = declared_corpus(midi_dir, corpus)
    files = sorted(p for p in midi_dir.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
    jobs = []
    for p in files:
        parts = p.resolve().parts
        # ids: the path from the corpus folder (the first folder named like the declared corpus,
        # as the shared corpora are laid out; else the MIDI folder itself) -- ids only, no rules
        idx = next((i for i, x in enumerate(parts) if corpus in x.lower()), None) if corpus != PLAIN else None
        rel = "/".join(parts[idx:]) if idx is not None else (
            str(p.relative_to(midi_dir)) if corpus == PLAIN else f"{midi_dir.name}/{p.relative_to(midi_dir)}")
        tid = f"{corpus}-{slug(p.stem)}-{stable_hash(rel) % 16**6:06x}"
        why = None
        if corpus == "groove":
            why = "corpus groove (declared): drums only, one stem, nothing to pair it with"
        elif corpus == "nottingham" and p.parent.name.lower() in ("melody", "chords"):
            why = f"corpus nottingham (declared): {p.parent.name}/ duplicates a file of MIDI/"
        if why:
            if left_out is not None:
                left_out.append({"track_id": tid, "source": rel, "reason": why})
            continue
        jobs.append(Job(str(p), corpus, rel, tid, group_of(corpus, p)))
    if limit is not None and limit < len(jobs):
        order = np.random.default_rng(seed).permutation(len(jobs))
        jobs = [jobs[i] for i in sorted(order[:limit])]
    return jobs


def _per_folder(value, i: int):
    return value[i] if isinstance(value, (list, tuple)) else value


def read_corpus_song(path, corpus: str | None, rel: str) -> Song:
    """``read_song`` with the corpus's instrument rules (:data:`ASSIGN_CORPORA`); ``rel``: the
    file's path below the MIDI root (the seed of the assignment)."""
    return read_song(path, assign=corpus if corpus in ASSIGN_CORPORA else None, key=rel)


def load_song(job: Job) -> Song:
    song = read_corpus_song(job.path, job.corpus, job.rel)
    if job.corpus == "pop909":
        b = read_pop909_beats(Path(job.path).parent)
        if b is not None:  # POP909's annotated beats and downbeats replace the MIDI's grid
            song.beats, song.downbeats = b
            song.downbeat_shift = 0
    return song


def activity(song: Song, cats: list[str], res: float = 0.25) -> np.ndarray:
    """(len(cats), frames) bool: a note of the category sounds in the frame."""
    nf = int(np.ceil(song.end / res)) + 1
    act = np.zeros((len(cats), nf), dtype=bool)
    idx = {c: i for i, c in enumerate(cats)}
    for n in song.notes:
        a = int(n.start / res)
        b = max(a + 1, int(np.ceil(n.end / res)))
        act[idx[n.category], a:b] = True
    return act


def choose_excerpt(song: Song, seconds: float, rng: np.random.Generator, res: float = 0.25) -> float:
    """Start (s) of a busy excerpt: a bar start where the most stems play for at least half of the
    excerpt; ties are broken by ``rng`` (deterministic with the seed)."""
    if song.end <= seconds:
        return 0.0
    cats = song.categories()
    act = activity(song, cats, res)
    w = int(round(seconds / res))
    cs = np.concatenate([np.zeros((len(cats), 1)), np.cumsum(act, axis=1)], axis=1)
    cand = song.downbeats if len(song.downbeats) else song.beats
    cand = cand[(cand >= 0) & (cand + seconds <= song.end)]
    if len(cand) == 0:
        cand = np.arange(0.0, song.end - seconds + 1e-9, 1.0)
    fi = np.clip((cand / res).astype(int), 0, act.shape[1] - w)
    cover = (cs[:, fi + w] - cs[:, fi]) / w  # (cats, cand)
    score = (cover >= 0.5).sum(axis=0) + 0.01 * cover.sum(axis=0) / max(1, len(cats))
    best = np.flatnonzero(score >= np.floor(score.max()))  # all candidates with the top stem count
    return float(cand[best[rng.integers(len(best))]])


def render_song(song: Song, renderer, excerpt: float | None = None, seed: int = 0, key: str = "") -> dict:
    """Render every stem of ``song`` -> {"stems": {cat: audio}, "start", "end", "beats", "dropped"}."""
    if excerpt:
        start = choose_excerpt(song, excerpt, np.random.default_rng(stable_hash("excerpt", seed, key)))
        end = min(start + excerpt, song.end + TAIL)
    else:
        start, end = 0.0, song.end + TAIL
    stems, dropped = {}, []
    for cat in song.categories():
        notes = [n for n in song.notes if n.category == cat]
        if not any(n.end > start and n.start < end for n in notes):
            dropped.append(cat)
            continue
        chans = {n.channel for n in notes}
        ctrl = [c for c in song.controls if c.channel in chans]
        x = renderer.render(notes, ctrl, start, end, preroll=PREROLL if start > 0 else 0.0)
        if not np.isfinite(x).all() or float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) < SILENT_RMS:
            dropped.append(cat)
            continue
        stems[cat] = x
    if stems:
        peak = float(np.abs(sum(stems.values())).max())
        if peak > PEAK:
            g = PEAK / peak
            stems = {k: v * g for k, v in stems.items()}
    beats = song.beats[(song.beats >= start) & (song.beats < end)] - start
    downs = song.downbeats[(song.downbeats >= start) & (song.downbeats < end)] - start
    return {"stems": stems, "start": start, "end": end, "beats": beats, "downbeats": downs, "dropped": dropped}


def write_track(out_dir: Path, track_id: str, stems: dict[str, np.ndarray], meta: dict, labels: dict[str, str],
                ext: str = ".wav", categories: dict[str, str] | None = None) -> Path:
    """Write one track atomically: a temporary folder renamed into place.

    ``stems`` and ``labels`` are keyed by category (stem id = ``gm.stem_id(category)``), or, when
    ``categories`` is given, by stem id with ``categories[stem_id]`` naming each one's category.
    """
    import soundfile as sf

    final = out_dir / track_id
    tmp = out_dir / f".tmp-{track_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    entry = {}
    for key, x in stems.items():
        sid, cat = (key, categories[key]) if categories is not None else (gm.stem_id(key), key)
        sf.write(str(tmp / f"{sid}{ext}"), np.clip(x, -1, 1), SR, subtype="PCM_16")
        entry[sid] = {"label": labels[key], "category": cat}
    doc = {"stems": entry, **meta}
    (tmp / "track.json").write_text(json.dumps(doc, indent=1))
    if final.exists():  # an incomplete leftover (no track.json): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


# ---- worker pool ---------------------------------------------------------------------------------

_RENDERER = None


def _init_worker(soundfont: str):
    global _RENDERER
    from .synth import Renderer

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _RENDERER = Renderer(soundfont, sr=SR)


def _load_for_render(job: Job, res: dict) -> tuple[Song | None, dict | None]:
    """(song, None), or (None, the skip record) for unreadable MIDI or fewer than 2 stems."""
    try:
        song = load_song(job)
    except MidiError as e:
        return None, {**res, "status": "skipped", "reason": f"unreadable MIDI: {e}"}
    if len(song.categories()) < 2:
        return None, {**res, "status": "skipped", "reason": f"fewer than 2 stems ({song.categories()})"}
    return song, None


def _run_job(args) -> dict:
    job, out_dir, excerpt, seed = args
    t = time.time()
    res = {"track_id": job.track_id, "source": job.rel}
    try:
        song, skip = _load_for_render(job, res)
        if skip:
            return skip
        r = render_song(song, _RENDERER, excerpt, seed, job.rel)
        if len(r["stems"]) < 2:
            return {**res, "status": "skipped",
                    "reason": f"fewer than 2 non-silent stems ({sorted(r['stems'])}, silent: {r['dropped']})"}
        meta = {"beats": [round(float(b), 4) for b in r["beats"]],
                "downbeats": [round(float(b), 4) for b in r["downbeats"]], "downbeat_shift": int(song.downbeat_shift),
                "source": job.rel, "corpus": job.corpus, "group": job.group,
                "excerpt": [round(r["start"], 4), round(r["end"], 4)], "sample_rate": SR,
                "dropped_silent": r["dropped"]}
        write_track(Path(out_dir), job.track_id, r["stems"], meta, song.labels)
        dur = r["end"] - r["start"]
        return {**res, "status": "ok", "stems": len(r["stems"]), "seconds": dur, "render_s": time.time() - t}
    except Exception as e:  # never stop the run
        return {**res, "status": "skipped", "reason": f"error: {type(e).__name__}: {e}",
                "trace": traceback.format_exc(limit=3)}


def is_complete(track_dir: Path) -> bool:
    return (track_dir / "track.json").is_file()


def render_corpus(midi_dirs, out_dir, soundfont: str, jobs: int = 1, excerpt: float | None = None,
                  limit: int | None = None, val_fraction: float = 0.08, seed: int = 0, progress: bool = True,
                  only_ids: list[str] | None = None, corpora=None) -> dict:
    """Render every MIDI file of ``midi_dirs`` into ``out_dir``; resumable; returns the report.
    ``only_ids``: render just these track ids of the set (e.g. one validation list).
    ``corpora``: the declared corpus of every folder (one name, or one per folder; None: each
    folder's ``corpus.json``, else plain MIDI). ``skipped_tracks`` names every file left out."""
    from tqdm import tqdm

    if isinstance(midi_dirs, (str, Path)):
        midi_dirs = [midi_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not Path(soundfont).is_file():
        raise FileNotFoundError(f"{soundfont}: no such soundfont")
    all_jobs, left_out = [], []
    for i, d in enumerate(midi_dirs):  # limit: one int for every folder, or one per folder
        all_jobs += find_jobs(d, _per_folder(limit, i), seed, _per_folder(corpora, i), left_out)
    if only_ids is not None:
        keep = set(only_ids)
        all_jobs = [j for j in all_jobs if j.track_id in keep]
        left_out = []
    skipped_dir = out_dir / ".skipped"
    todo, done, skipped = [], 0, list(left_out)
    for j in all_jobs:
        if is_complete(out_dir / j.track_id):
            done += 1
        elif (skipped_dir / f"{j.track_id}.json").exists():  # skipped by an earlier run: don't retry
            skipped.append(json.loads((skipped_dir / f"{j.track_id}.json").read_text()))
        else:
            todo.append(j)
    # interleave corpora/folders so that a run stopped early is still a balanced sample
    todo.sort(key=lambda j: stable_hash("order", seed, j.track_id))
    t0 = time.time()
    results = []
    args = [(j, str(out_dir), excerpt, seed) for j in todo]
    bar = tqdm(total=len(args), desc="render", unit="song", disable=not progress, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    if jobs <= 1:
        _init_worker(soundfont)
        it = map(_run_job, args)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn" if sys.platform == "darwin" else "fork").Pool(jobs, _init_worker, (soundfont,))
        it = pool.imap_unordered(_run_job, args, chunksize=1)
    try:
        for r in it:
            results.append(r)
            if r["status"] != "ok":
                skipped.append(r)
                if not r["reason"].startswith("error:"):  # deterministic reasons: don't retry on resume
                    skipped_dir.mkdir(exist_ok=True)
                    (skipped_dir / f"{r['track_id']}.json").write_text(json.dumps(r))
            bar.update(1)
            if len(results) % 200 == 0:  # keep splits.json current so a partial set is usable
                write_splits(out_dir, val_fraction, seed)
            bar.set_postfix(ok=sum(x["status"] == "ok" for x in results), skipped=len(skipped))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    for p in out_dir.glob(".tmp-*"):  # leftovers of killed runs
        shutil.rmtree(p, ignore_errors=True)
    elapsed = time.time() - t0
    ok = [r for r in results if r["status"] == "ok"]
    splits = write_splits(out_dir, val_fraction, seed)
    audio_s = sum(r["seconds"] for r in ok)
    report = {
        "midi_dirs": [str(d) for d in midi_dirs], "soundfont": str(soundfont), "excerpt": excerpt, "limit": limit,
        "seed": seed, "val_fraction": val_fraction, "jobs": jobs,
        "corpora": [declared_corpus(d, _per_folder(corpora, i)) for i, d in enumerate(midi_dirs)],
        "found": len(all_jobs) + len(left_out), "already_done": done, "rendered": len(ok), "skipped": len(skipped),
        "elapsed_s": round(elapsed, 1),
        "speed_x_realtime": round(audio_s / elapsed, 1) if elapsed > 0 else None,
        "songs_per_s": round(len(ok) / elapsed, 3) if elapsed > 0 else None,
        "tracks_total": len(splits["train"]) + len(splits["validation"]),
        "train": len(splits["train"]), "validation": len(splits["validation"]),
        "skipped_tracks": [{k: r.get(k) for k in ("track_id", "source", "reason")} for r in skipped],
    }
    prev = out_dir / "render_report.json"
    history = []
    if prev.exists():  # keep the figures of earlier runs into this folder (resumes)
        try:
            old = json.loads(prev.read_text())
            history = old.get("history", []) + [{k: old.get(k) for k in (
                "found", "already_done", "rendered", "skipped", "elapsed_s", "songs_per_s", "speed_x_realtime",
                "jobs", "excerpt")}]
        except ValueError:
            pass
    report["history"] = history[-20:]
    (out_dir / "render_report.json").write_text(json.dumps(report, indent=1))
    return report


def split_of(group: str, val_fraction: float, seed: int) -> str:
    """"validation" for a fixed fraction of song groups, from a hash of the group: stable under
    resume and independent of which other tracks exist."""
    u = (stable_hash("split", seed, group) % 10**9) / 1e9
    return "validation" if u < val_fraction else "train"


def write_splits(out_dir: Path, val_fraction: float, seed: int, force_split: str | None = None) -> dict:
    """splits.json from the tracks present: by song group (:func:`split_of`), or every track in
    ``force_split`` (a validation-only set)."""
    splits = {"train": [], "validation": []}
    for tj in sorted(Path(out_dir).glob("*/track.json")):
        try:
            doc = json.loads(tj.read_text())
        except ValueError:
            continue
        group = doc.get("group") or tj.parent.name
        splits[force_split or split_of(group, val_fraction, seed)].append(tj.parent.name)
    splits["grouping"] = "song title (touhou), song id (pop909), tune (nottingham)"
    splits["val_fraction"] = val_fraction
    splits["seed"] = seed
    tmp = Path(out_dir) / ".splits.json.tmp"
    tmp.write_text(json.dumps(splits, indent=1))
    os.replace(tmp, Path(out_dir) / "splits.json")
    return splits


# ---- the default training set ------------------------------------------------------------------

DEFAULT_SET = {
    # folder under the MIDI root -> songs rendered (seeded choice); 30-s busy excerpts
    "touhou": 1000,
    "pop909": 500,
    "nottingham": 400,
}
DEFAULT_EXCERPT = 30.0
DEFAULT_SEED = 0
DEFAULT_VAL_FRACTION = 0.08


def render_default(out_dir, midi_root, soundfont, jobs: int = 2, only_ids: list[str] | None = None) -> dict:
    """The default training set: :data:`DEFAULT_SET` songs of touhou + pop909 + nottingham
    (``MIDI_ROOT/<corpus>/``, each folder declared as its corpus), 30-s excerpts, FluidR3_GM, 8 %
    validation by song. Restartable (finished tracks are kept)."""
    from tqdm import tqdm  # noqa: F401  (fail early if missing)

    dirs = [Path(midi_root) / name for name in DEFAULT_SET]
    return render_corpus(dirs, out_dir, soundfont, jobs, DEFAULT_EXCERPT, list(DEFAULT_SET.values()),
                         DEFAULT_VAL_FRACTION, DEFAULT_SEED, only_ids=only_ids, corpora=list(DEFAULT_SET))


# ---- varied renders (training/data/vary.py) -------------------------------------------------------

def render_varied_song(song: Song, bank, recipe, seed: int, variant: int, key: str, sr: int = SR) -> dict:
    """One variant of ``song``: drawn key, tempo and instruments, a sound source per stem, the
    room and mix chain per stem. The whole song (up to ``recipe.max_seconds``) is rendered."""
    from . import vary

    song, var = vary.vary_song(song, recipe, seed, variant, key)
    end = min(song.end + TAIL, recipe.max_seconds)
    cats = song.categories()
    var.sources = vary.draw_sources(cats, recipe, seed, variant, key, bank.drum_names)
    var.mix, var.room_rt60 = vary.draw_mix(cats, recipe, seed, variant, key)
    ir = vary.room_impulse(var.room_rt60, sr, vary.variant_rng(seed, variant, key, "room"))
    stems, dropped = {}, []
    for cat in cats:
        notes = [n for n in song.notes if n.category == cat]
        if not any(n.start < end for n in notes):
            dropped.append(cat)
            continue
        chans = {n.channel for n in notes}
        ctrl = [c for c in song.controls if c.channel in chans]
        x = bank[var.sources[cat]].render(notes, ctrl, 0.0, end, preroll=0.0)
        if not np.isfinite(x).all() or float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) < SILENT_RMS:
            dropped.append(cat)
            continue
        stems[cat] = vary.apply_mix(x, var.mix[cat], ir, sr)
    if stems:
        peak = float(np.abs(sum(stems.values())).max())
        g = PEAK / peak if peak > 0 else 1.0
        g = min(g, 10 ** (6 / 20))  # quiet songs are raised by at most 6 dB
        stems = {k: v * g for k, v in stems.items()}
    beats = song.beats[(song.beats >= 0) & (song.beats < end)]
    downs = song.downbeats[(song.downbeats >= 0) & (song.downbeats < end)]
    return {"stems": stems, "start": 0.0, "end": end, "beats": beats, "downbeats": downs, "dropped": dropped,
            "variant": var, "labels": song.labels}


_BANK = None


def _init_varied_worker(recipe):
    global _BANK
    from .vary import SourceBank

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _BANK = SourceBank(recipe, sr=SR)


def _run_varied_job(args) -> dict:
    job, out_dir, recipe, seed, variant, split = args
    t = time.time()
    tid = f"{job.track_id}-v{variant}"
    res = {"track_id": tid, "source": job.rel}
    try:
        song, skip = _load_for_render(job, res)
        if skip:
            return skip
        r = render_varied_song(song, _BANK, recipe, seed, variant, job.rel)
        if len(r["stems"]) < 2:
            return {**res, "status": "skipped",
                    "reason": f"fewer than 2 non-silent stems ({sorted(r['stems'])}, silent: {r['dropped']})"}
        meta = {"beats": [round(float(b), 4) for b in r["beats"]],
                "downbeats": [round(float(b), 4) for b in r["downbeats"]], "downbeat_shift": int(song.downbeat_shift),
                "source": job.rel, "corpus": job.corpus, "group": job.group, "song_id": job.track_id,
                "excerpt": [0.0, round(r["end"], 4)], "sample_rate": SR, "dropped_silent": r["dropped"],
                "recipe": recipe.name, "seed": seed, "variant_index": variant, "variant": r["variant"].to_dict()}
        if split:
            meta["split"] = split
        write_track(Path(out_dir), tid, r["stems"], meta, r["labels"])
        return {**res, "status": "ok", "stems": len(r["stems"]), "seconds": r["end"], "render_s": time.time() - t}
    except Exception as e:  # never stop the run
        return {**res, "status": "skipped", "reason": f"error: {type(e).__name__}: {e}",
                "trace": traceback.format_exc(limit=3)}


def render_varied(midi_dirs, out_dir, recipe, variants=(0,), jobs: int = 1, limit=None, seed: int = 0,
                  val_fraction: float = DEFAULT_VAL_FRACTION, only_split: str | None = None,
                  force_split: str | None = None, exclude_corpora=(), progress: bool = True, corpora=None,
                  only_tracks=None) -> dict:
    """Render ``variants`` of every song of ``midi_dirs`` with ``recipe`` (training/data/vary.py).

    ``only_split``: keep the songs whose song-group split (:func:`split_of`, the same hash as every
    other render with this seed and fraction) is this one. ``force_split``: write every track into
    this split (a validation-only set). ``corpora``: as in :func:`render_corpus`. Resumable and
    deterministic like :func:`render_corpus`.
    """
    from tqdm import tqdm

    from .vary import missing_sources

    miss = missing_sources(recipe)
    if miss:
        raise FileNotFoundError("sound sources not installed (bash scripts/setup_system.sh installs them): "
                                + ", ".join(miss))
    if isinstance(midi_dirs, (str, Path)):
        midi_dirs = [midi_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_jobs, left_out = [], []
    for i, d in enumerate(midi_dirs):
        all_jobs += find_jobs(d, _per_folder(limit, i), seed, _per_folder(corpora, i), left_out)
    left_out += [{"track_id": j.track_id, "source": j.rel, "reason": f"corpus {j.corpus} excluded"}
                 for j in all_jobs if j.corpus in exclude_corpora]
    all_jobs = [j for j in all_jobs if j.corpus not in exclude_corpora]
    if only_split:
        all_jobs = [j for j in all_jobs if split_of(j.group, val_fraction, seed) == only_split]
    if only_tracks is not None:
        want = set(only_tracks)
        all_jobs = [j for j in all_jobs if j.track_id in want]
    skipped_dir = out_dir / ".skipped"
    todo, done, skipped = [], 0, list(left_out)
    for v in variants:
        for j in all_jobs:
            tid = f"{j.track_id}-v{v}"
            if is_complete(out_dir / tid):
                done += 1
            elif (skipped_dir / f"{tid}.json").exists():
                skipped.append(json.loads((skipped_dir / f"{tid}.json").read_text()))
            else:
                todo.append((j, v))
    # variants in order, songs interleaved within a variant: a stopped run is a balanced sample
    todo.sort(key=lambda jv: (jv[1], stable_hash("order", seed, jv[0].track_id)))
    args = [(j, str(out_dir), recipe, seed, v, force_split) for j, v in todo]
    t0 = time.time()
    results = []
    bar = tqdm(total=len(args), desc=f"render {recipe.name}", unit="song", disable=not progress, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    if jobs <= 1:
        _init_varied_worker(recipe)
        it, pool = map(_run_varied_job, args), None
    else:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(jobs, _init_varied_worker, (recipe,))
        it = pool.imap_unordered(_run_varied_job, args, chunksize=1)
    try:
        for r in it:
            results.append(r)
            if r["status"] != "ok":
                skipped.append(r)
                if not r["reason"].startswith("error:"):
                    skipped_dir.mkdir(exist_ok=True)
                    (skipped_dir / f"{r['track_id']}.json").write_text(json.dumps(r))
            bar.update(1)
            if len(results) % 100 == 0:
                write_splits(out_dir, val_fraction, seed, force_split)
            bar.set_postfix(ok=sum(x["status"] == "ok" for x in results), skipped=len(skipped))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    for p in out_dir.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    elapsed = time.time() - t0
    ok = [r for r in results if r["status"] == "ok"]
    splits = write_splits(out_dir, val_fraction, seed, force_split)
    from .layout import dataset_stats

    report = {"recipe": recipe.name, "recipe_settings": {k: v for k, v in vars(recipe).items()},
              "midi_dirs": [str(d) for d in midi_dirs], "variants": list(variants), "seed": seed, "limit": limit,
              "only_split": only_split, "force_split": force_split, "exclude_corpora": list(exclude_corpora),
              "corpora": [declared_corpus(d, _per_folder(corpora, i)) for i, d in enumerate(midi_dirs)],
              "found": len(all_jobs) * len(variants) + len(left_out), "already_done": done, "rendered": len(ok),
              "skipped": len(skipped), "elapsed_s": round(elapsed, 1),
              "audio_s_this_run": round(sum(r["seconds"] for r in ok), 1),
              "train": len(splits["train"]), "validation": len(splits["validation"]),
              "size": dataset_stats(out_dir),
              "skipped_tracks": [{k: r.get(k) for k in ("track_id", "source", "reason")} for r in skipped]}
    (out_dir / "render_report.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def rephase_downbeats(out_dir: str | Path, midi_root: str | Path, progress: bool = True) -> dict:
    """Bring a dataset rendered before :func:`training.data.midi.drum_bar_shift` existed up to it:
    every track whose ``track.json`` has no ``downbeat_shift`` gets the shift its source MIDI gives
    (0 for POP909, whose downbeats are annotated), its downbeats moved that many beats along its own
    beats (the ones it had are kept as ``downbeats_grid``), and ``downbeat_shift`` recorded. A
    track already carrying ``downbeat_shift`` is left as it is, so running it twice changes nothing.
    Returns counts: ``{"tracks", "shifted", "unchanged", "already", "failed"}``."""
    from .midi import shift_downbeats

    out_dir, midi_root = Path(out_dir), Path(midi_root)
    paths = sorted(out_dir.glob("*/track.json"))
    counts = {"tracks": len(paths), "shifted": 0, "unchanged": 0, "already": 0, "failed": 0}
    it = paths
    if progress:
        from tqdm import tqdm

        it = tqdm(paths, desc=f"rephase {out_dir.name}", unit="track")
    for p in it:
        meta = json.loads(p.read_text())
        if "downbeat_shift" in meta:
            counts["already"] += 1
            continue
        shift = 0
        if meta.get("corpus") != "pop909" and meta.get("downbeats"):
            try:
                shift = int(read_corpus_song(midi_root / meta["source"], meta.get("corpus"),
                                             meta["source"]).downbeat_shift)
            except Exception:  # source missing or unreadable: leave the track untouched
                counts["failed"] += 1
                continue
        if shift:
            meta["downbeats_grid"] = meta["downbeats"]
            moved = shift_downbeats(np.asarray(meta["beats"]), np.asarray(meta["downbeats"]), shift)
            meta["downbeats"] = [round(float(b), 4) for b in moved]
        meta["downbeat_shift"] = shift
        counts["shifted" if shift else "unchanged"] += 1
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(p)
    return counts

"""Corpus rules by declaration (issue 17): ``training.data render`` treats a folder as one of the
known corpora only when told so (``--corpus`` or ``corpus.json``), never because of a file's or a
folder's name; it reports every file it leaves out, and exits 2 when nothing was rendered."""
import json

import pytest

pytest.importorskip("mido")
pytest.importorskip("fluidsynth")
from test_data_render import SF2, make_song  # noqa: E402  (skips the module without a GM soundfont)

from training.data.render import CorpusError, declared_corpus, find_jobs  # noqa: E402

pytestmark = pytest.mark.skipif(not __import__("os").path.exists(SF2), reason="no GM soundfont installed")


def test_names_decide_nothing(tmp_path):
    d = tmp_path / "grooves" / "pop909_nottingham"
    d.mkdir(parents=True)
    make_song(d / "groove_100bpm.mid")
    (d / "chords").mkdir()
    make_song(d / "chords" / "touhou.mid")
    left = []
    jobs = find_jobs(tmp_path / "grooves", left_out=left)
    assert len(jobs) == 2 and not left
    assert {j.corpus for j in jobs} == {"midi"}
    assert all(j.track_id.startswith("midi-") for j in jobs)


def test_declared_by_flag_or_manifest(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    make_song(d / "a.mid")
    (d / "melody").mkdir()
    make_song(d / "melody" / "b.mid")
    assert declared_corpus(d) == "midi"
    left = []
    jobs = find_jobs(d, corpus="nottingham", left_out=left)
    assert [j.corpus for j in jobs] == ["nottingham"]
    assert len(left) == 1 and "melody/" in left[0]["reason"] and left[0]["source"].endswith("b.mid")
    (d / "corpus.json").write_text(json.dumps({"corpus": "groove"}))
    assert declared_corpus(d) == "groove"
    left = []
    assert find_jobs(d, left_out=left) == [] and len(left) == 2
    assert all("groove (declared)" in x["reason"] for x in left)
    assert declared_corpus(d, "pop909") == "pop909"  # the flag wins over the manifest
    (d / "corpus.json").write_text(json.dumps({"corpus": "jazz"}))
    with pytest.raises(CorpusError, match="unknown corpus 'jazz'"):
        find_jobs(d)
    (d / "corpus.json").write_text("{not json")
    with pytest.raises(CorpusError, match="unreadable"):
        declared_corpus(d)


def test_cli_renders_a_user_groove_file_and_reports_skips(tmp_path, capsys):
    from training.data.__main__ import main

    midi = tmp_path / "grooves"
    midi.mkdir()
    make_song(midi / "groove_100bpm.mid", bars=2, tempo_change=False)
    make_song(midi / "onestem.mid", programs=((0, 0),), drums=False, bars=2)
    out = tmp_path / "out"
    assert main(["render", str(midi), str(out), "--soundfont", SF2]) == 0
    text = capsys.readouterr().out
    assert "rendered=1" in text and "skipped=1" in text
    assert "skipped onestem.mid: fewer than 2 stems" in text
    # declared Groove: every file left out, each with its reason, and exit status 2
    assert main(["render", str(midi), str(tmp_path / "out2"), "--soundfont", SF2, "--corpus", "groove"]) == 2
    cap = capsys.readouterr()
    assert cap.out.count("corpus groove (declared)") == 2
    assert "nothing to render" in cap.err and "hint:" in cap.err
    # an empty folder: exit status 2, "no MIDI files"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not midi")
    assert main(["render", str(empty), str(tmp_path / "out3"), "--soundfont", SF2]) == 2
    assert "no MIDI files" in capsys.readouterr().err
    # one name per folder, or one for all
    with pytest.raises(SystemExit) as e:
        main(["render", str(midi), str(empty), str(tmp_path / "o4"), "--soundfont", SF2,
              "--corpus", "midi,pop909,groove"])
    assert e.value.code == 2
    assert "3 names for 2 folders" in capsys.readouterr().err

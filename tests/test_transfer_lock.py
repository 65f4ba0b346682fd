"""`selfsup transfer` writes in --out only under the student's run lock, and refuses before writing anything what
would replace the labels a student depends on (another transfer running there, another teacher, another set)."""
import shutil

import pytest

from conftest import TINY, one_line_error, run
from selfsup.transfer import pseudo_labels
from selfsup.engine.rundir import RunLock
from selfsup.errors import SelfSupError
from selfsup.eval.features import file_hash

OTHER = "synthetic:64?classes=4&size=16&seed=5"


def _transfer(capsys, teacher, out, *more):
    return run(capsys, "transfer", "--teacher", teacher, "--student", "convnet", "--cluster-data", TINY,
               "--clusters", 4, "--epochs", 1, "--batch-size", 16, "--out", out, "--device", "cpu", *more,
               "progress=false")


def test_a_second_transfer_is_refused_while_one_runs_and_writes_nothing(tmp_path, capsys, random_ckpt):
    """The running student has its labels and trained_on.txt but no checkpoint yet: a second transfer with
    another labelling set used to rewrite both before the trainer refused it."""
    out = tmp_path / "tr"
    assert _transfer(capsys, random_ckpt, out)[0] == 0
    (out / "student" / "last.pt").rename(tmp_path / "last.pt")       # as before the running one's first save
    labels, record = file_hash(out / "pseudo_labels.npz"), (out / "student" / "trained_on.txt").read_text()
    lock = RunLock(out / "student").acquire()                         # the running transfer
    try:
        code, _, err = _transfer(capsys, random_ckpt, out, "--label-data", OTHER)
    finally:
        lock.release()
    assert one_line_error(code, err, "is in use by another run"), err
    assert file_hash(out / "pseudo_labels.npz") == labels
    assert (out / "student" / "trained_on.txt").read_text() == record


def test_the_labels_of_another_labelling_set_are_refused_not_rewritten(tmp_path, random_ckpt):
    out = tmp_path / "pl.npz"
    pseudo_labels(str(random_ckpt), TINY, out, clusters=4)
    labels = file_hash(out)
    with pytest.raises(SelfSupError, match="another teacher or setting"):
        pseudo_labels(str(random_ckpt), TINY, out, label_spec=OTHER, clusters=4)
    assert file_hash(out) == labels
    assert pseudo_labels(str(random_ckpt), TINY, out, clusters=4)["reused"]


def test_another_teacher_is_refused_naming_the_student_before_the_teacher_runs(tmp_path, capsys, random_ckpt):
    out, teacher = tmp_path / "tr", tmp_path / "other.pt"
    assert _transfer(capsys, random_ckpt, out)[0] == 0
    shutil.copy(random_ckpt, teacher)                                 # the same weights, another file name
    code, _, err = _transfer(capsys, teacher, out)
    assert one_line_error(code, err, f"remove {out / 'student'} and {out / 'pseudo_labels.npz'}, made for it,"), err
    (out / "pseudo_labels.npz").unlink()                              # the user removes only the labels
    code, _, err = _transfer(capsys, teacher, out)
    assert one_line_error(code, err, "was trained on pseudo-labels"), err
    assert not (out / "pseudo_labels.npz").exists()                   # the teacher did not run


def test_links_in_the_transfer_out_are_never_written_through(tmp_path, capsys, random_ckpt):
    """A link at pseudo_labels.npz is read as the labels there, never written through; other links in --out are
    the user's (they were refused as 'not the run's own files')."""
    out, elsewhere = tmp_path / "tr", tmp_path / "elsewhere.npz"
    out.mkdir()
    elsewhere.write_bytes(b"someone's file")
    (out / "pseudo_labels.npz").symlink_to(elsewhere)
    code, _, err = _transfer(capsys, random_ckpt, out)             # read as the labels there: not labels
    assert one_line_error(code, err, "pseudo_labels.npz is not an .npz archive"), err
    assert elsewhere.read_bytes() == b"someone's file"
    (out / "pseudo_labels.npz").unlink()
    (out / "notes").symlink_to(tmp_path)
    assert _transfer(capsys, random_ckpt, out)[0] == 0


def test_the_student_trains_under_the_lock_taken_before_its_labels(tmp_path, capsys, random_ckpt, monkeypatch):
    """transfer released the student's lock before its trainer took it again: another transfer could slip in."""
    import selfsup.engine.trainer as trainer_mod

    seen, real = [], trainer_mod.pretrain

    def pretrain(cfg, held=None, **kw):
        seen.append(held is not None and held.fd is not None)
        return real(cfg, held=held, **kw)

    monkeypatch.setattr(trainer_mod, "pretrain", pretrain)      # transfer imports it when it runs
    assert _transfer(capsys, random_ckpt, tmp_path / "tr")[0] == 0
    assert seen == [True]
    RunLock(tmp_path / "tr" / "student").acquire().release()     # released at the end: another can take it


def test_the_labels_are_written_through_no_planted_temporary(tmp_path, capsys, random_ckpt):
    """The labels went to a fixed temporary name (pseudo_labels.npz.tmp.npz), written through a link planted there."""
    out, victim = tmp_path / "tr", tmp_path / "victim"
    out.mkdir()
    victim.write_bytes(b"keep")
    (out / "pseudo_labels.npz.tmp.npz").symlink_to(victim)
    assert _transfer(capsys, random_ckpt, out)[0] == 0
    assert victim.read_bytes() == b"keep"

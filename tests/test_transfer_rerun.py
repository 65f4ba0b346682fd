"""Rerunning `selfsup transfer` on the same --out: the student is checked before the teacher runs, and continued
only on the pseudo-labels (or the regressed teacher) it was trained on."""
import shutil

from conftest import TINY, one_line_error, run
from selfsup.checkpoint import load_checkpoint
from selfsup.cli import main
from selfsup.eval.features import file_hash


def _transfer(capsys, teacher, out, *more):
    return run(capsys, "transfer", "--teacher", teacher, "--student", "convnet", "--cluster-data", TINY,
               "--clusters", 4, "--epochs", 1, "--batch-size", 16, "--out", out, "--device", "cpu", *more,
               "progress=false")


def _other_teacher(tmp_path):
    out = tmp_path / "other"
    assert main(["pretrain", "simclr", "--data", TINY, "--backbone", "convnet", "--epochs", "0", "--batch-size", "4",
                 "--out", str(out), "progress=false", "device=cpu", "seed=7"]) == 0
    return out / "last.pt"


def test_a_changed_teacher_is_refused_instead_of_resuming_the_student(tmp_path, capsys, random_ckpt):
    teacher, out = tmp_path / "teacher.pt", tmp_path / "tr"
    shutil.copy(random_ckpt, teacher)
    code, _, err = _transfer(capsys, teacher, out)
    assert code == 0, err
    student = file_hash(out / "student" / "last.pt")
    shutil.copy(_other_teacher(tmp_path), teacher)          # the teacher changes, the user removes the labels
    (out / "pseudo_labels.npz").unlink()
    code, _, err = _transfer(capsys, teacher, out)
    assert one_line_error(code, err, "was trained on pseudo-labels"), err
    assert f"remove {out / 'student'}" in err and file_hash(out / "student" / "last.pt") == student


def test_a_changed_regression_teacher_is_refused(tmp_path, capsys, random_ckpt):
    teacher, out = tmp_path / "teacher.pt", tmp_path / "reg"
    shutil.copy(random_ckpt, teacher)
    code, _, err = _transfer(capsys, teacher, out, "--objective", "regress")
    assert code == 0, err
    shutil.copy(_other_teacher(tmp_path), teacher)
    code, _, err = _transfer(capsys, teacher, out, "--objective", "regress")
    assert one_line_error(code, err, "was trained on teacher teacher.pt@"), err


def test_other_settings_are_refused_before_the_labels_are_rewritten(tmp_path, capsys, random_ckpt):
    out = tmp_path / "tr"
    code, _, err = _transfer(capsys, random_ckpt, out)
    assert code == 0, err
    labels = file_hash(out / "pseudo_labels.npz")
    code, _, err = _transfer(capsys, random_ckpt, out, "--label-data", "synthetic:32?classes=4&size=16&seed=1")
    assert one_line_error(code, err, "cannot continue with another data"), err
    code, _, err = run(capsys, "transfer", "--teacher", random_ckpt, "--student", "convnet", "--cluster-data", TINY,
                       "--clusters", 4, "--epochs", 2, "--batch-size", 16, "--out", out, "--device", "cpu",
                       "progress=false")
    assert one_line_error(code, err, "add resume_with_changes=true to continue it"), err
    assert "--resume-with-changes" not in err and file_hash(out / "pseudo_labels.npz") == labels
    code, _, err = run(capsys, "transfer", "--teacher", random_ckpt, "--student", "convnet", "--cluster-data", TINY,
                       "--clusters", 4, "--epochs", 2, "--batch-size", 16, "--out", out, "--device", "cpu",
                       "progress=false", "resume_with_changes=true")
    assert code == 0, err                                     # the fix the message names works


def test_an_unknown_student_is_refused_before_the_teacher_runs(tmp_path, capsys, random_ckpt):
    for student in ("nosuch", "timm:nosuch_model"):
        code, _, err = run(capsys, "transfer", "--teacher", random_ckpt, "--student", student, "--cluster-data", TINY,
                           "--clusters", 4, "--out", tmp_path / "tr", "--device", "cpu", "progress=false")
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "tr" / "pseudo_labels.npz").exists()


def test_an_out_that_is_a_file_or_not_writable_is_refused_before_the_teacher_runs(tmp_path, capsys, random_ckpt,
                                                                                  monkeypatch):
    """The run directory's one-line refusals (``prepare_out``), before features, k-means or a label file."""
    import os

    import selfsup.transfer as transfer_mod

    def teacher_ran(*args, **kwargs):
        raise AssertionError("the teacher ran before --out was checked")

    monkeypatch.setattr(transfer_mod, "pseudo_labels", teacher_ran)
    (tmp_path / "afile").write_text("")
    for out, fragment in ((tmp_path / "afile", "is a file, not a folder: give a folder for the run"),
                          (tmp_path / "afile" / "sub", "cannot create the run directory"),
                          (tmp_path / "locked", "is not writable: choose a writable --out")):
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(tmp_path / "locked")
                            else real_access(p, mode, **kw))
        for objective in ("classify", "regress"):
            code, _, err = _transfer(capsys, random_ckpt, out, "--objective", objective)
            assert one_line_error(code, err, fragment), err
        monkeypatch.setattr(os, "access", real_access)
    assert (tmp_path / "afile").read_text() == ""


def test_the_same_out_spelled_otherwise_or_moved_continues_the_student(tmp_path, capsys, random_ckpt, monkeypatch):
    """The student's data names OUT's labels file: an absolute --out after a relative one is the same file, and
    the labels of a moved OUT are the student's own (trained_on.txt checks their content)."""
    import json

    monkeypatch.chdir(tmp_path)
    assert _transfer(capsys, random_ckpt, "tr")[0] == 0
    code, _, err = _transfer(capsys, random_ckpt, tmp_path / "tr")
    assert code == 0, err
    data = load_checkpoint(tmp_path / "tr" / "student" / "last.pt")["config"]["data"]
    assert data.endswith("labels=tr/pseudo_labels.npz")                 # the run's own spelling, no change
    shutil.move(tmp_path / "tr", tmp_path / "moved")
    code, stdout, err = _transfer(capsys, random_ckpt, "moved", "--epochs", 2, "resume_with_changes=true")
    assert code == 0, err
    assert "labels=tr/pseudo_labels.npz -> " in stdout and load_checkpoint(
        tmp_path / "moved" / "student" / "last.pt")["config"]["data"].endswith("labels=moved/pseudo_labels.npz")
    records = [json.loads(line) for line in (tmp_path / "moved" / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [r["resumed_with_changes"]["data"][1] for r in records if "resumed_with_changes" in r][-1].endswith(
        "labels=moved/pseudo_labels.npz")
    shutil.move(tmp_path / "moved", tmp_path / "again")
    code, _, err = _transfer(capsys, random_ckpt, "again", "--epochs", 2)       # nothing else changed: no flag
    assert code == 0, err


def test_the_regressed_teacher_spelled_otherwise_continues_the_student(tmp_path, capsys, random_ckpt, monkeypatch):
    shutil.copy(random_ckpt, tmp_path / "teacher.pt")
    monkeypatch.chdir(tmp_path)
    assert _transfer(capsys, "teacher.pt", "reg", "--objective", "regress")[0] == 0
    code, _, err = _transfer(capsys, tmp_path / "teacher.pt", "reg", "--objective", "regress")
    assert code == 0, err

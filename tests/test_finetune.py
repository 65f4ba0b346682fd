"""selfsup finetune: a pretrained backbone, labels, the recipes' learning rates, resume, top-1 / top-5."""
import json

import pytest
import torch

from conftest import one_line_error, run, tiny_overrides
from selfsup.checkpoint import load_checkpoint
from selfsup.config import resolve_config
from selfsup.engine.optim import lr_at
from selfsup.engine.trainer import Trainer
from selfsup.finetune import RECIPES, chance_warning, finetune_config
from selfsup.methods import get_method

DATA = "synthetic:96?classes=6&size=16"


@pytest.fixture
def pretrained(tmp_path):
    cfg = resolve_config(get_method("simclr"), overrides=tiny_overrides(tmp_path / "pre", epochs=1, data=DATA))
    Trainer(cfg).fit()
    return tmp_path / "pre" / "last.pt"


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    lrs = [lr_at(s, 100, 0, 1.0, milestones=(12, 16), gamma=0.2) for s in (0, 11, 12, 15, 16, 99)]
    assert lrs == pytest.approx([1.0, 1.0, 0.2, 0.2, 0.04, 0.04])
    assert lr_at(2, 100, 5, 1.0, milestones=(12,), gamma=0.2) == pytest.approx(0.4)     # warmup first


def test_recipe_gives_the_head_its_own_learning_rate(pretrained, tmp_path):
    """SwAV's 1% recipe: trunk lr 0.02, head lr 5 (lr_last_layer), no weight decay, steps at 12 and 16."""
    cfg = finetune_config(str(pretrained), DATA, "swav-1pct", batch_size=16, out=str(tmp_path / "ft"), device="cpu")
    assert (cfg.optim.lr, cfg.optim.head_lr, cfg.optim.weight_decay, list(cfg.optim.milestones)) == (0.02, 5.0, 0.0, [12, 16])
    assert cfg.backbone == "convnet" and cfg.image_size == 16 and cfg.init == str(pretrained)
    trainer = Trainer(cfg)
    head_ids = {id(p) for p in trainer.method.head.parameters()}
    for group in trainer.optimizer.param_groups:
        in_head = {id(p) in head_ids for p in group["params"]}
        assert len(in_head) == 1 and group["lr_scale"] == pytest.approx(250.0 if in_head.pop() else 1.0)
    start = load_checkpoint(pretrained)["backbone_state"]
    assert all(torch.equal(v, trainer.backbone.state_dict()[k]) for k, v in start.items())     # init's weights


def test_finetune_command_trains_scores_and_resumes(pretrained, tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["finetune", "--init", pretrained, "--data", DATA, "--test-data", DATA, "--epochs", 3, "--batch-size", 16,
            "--out", out, "--device", "cpu", "--json", "progress=false"]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["recipe"] == "swav-10pct"
    assert result["changes"] == {"epochs": 3, "batch_size": 16, "optim.milestones": [1.8, 2.4]}   # 12, 16 of 20
    assert 0 <= result["top1"] <= result["top5"] <= 1 and (out / "finetune.json").exists()
    assert result["classes"] == 6 and ("warning" in result) == (result["top1"] < 1.5 / 6)
    weights = load_checkpoint(out / "last.pt")["model"]["head.weight"].clone()
    code, stdout, _ = run(capsys, *args)                 # the same command again: nothing to train, the same score
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["top1"] == result["top1"]
    assert torch.equal(load_checkpoint(out / "last.pt")["model"]["head.weight"], weights)
    code, stdout, _ = run(capsys, *args[:-2], "progress=false")                        # the printed line
    assert code == 0 and f"top-1 {result['top1'] * 100:.1f}, top-5 {result['top5'] * 100:.1f} on" in stdout


def test_finetune_line_has_no_top5_below_five_classes(pretrained, tmp_path, capsys):
    four = "synthetic:48?classes=4&size=16"
    code, stdout, err = run(capsys, "finetune", "--init", pretrained, "--data", four, "--test-data", four, "--epochs",
                            1, "--batch-size", 16, "--out", tmp_path / "ft4", "--device", "cpu", "progress=false")
    assert code == 0, err
    assert "top-1 " in stdout and "top-5" not in stdout and "nan" not in stdout           # was 'top-5 nan'


def test_finetune_refuses_a_backbone_other_than_the_checkpoints(pretrained, tmp_path, capsys):
    code, _, err = run(capsys, "finetune", "--init", pretrained, "--data", DATA, "--test-data", DATA,
                       "--out", tmp_path / "x", "backbone=resnet18")
    assert code == 2 and "holds a convnet backbone, not resnet18: set --backbone convnet" in err
    assert set(RECIPES) == {"swav-10pct", "swav-1pct", "jigclu-10pct", "jigclu-1pct"}


def test_finetune_keeps_the_init_checkpoints_width(tmp_path):
    cfg = resolve_config(get_method("simclr"), overrides=tiny_overrides(tmp_path / "w", epochs=0, data=DATA, width=0.5))
    Trainer(cfg).fit()
    ft = finetune_config(str(tmp_path / "w" / "last.pt"), DATA, batch_size=16, out=str(tmp_path / "ft"), device="cpu")
    assert ft.width == 0.5 and Trainer(ft).backbone.out_dim == 96


def test_a_chance_level_score_is_said_with_the_head_lr_to_lower():
    """A diverged head (swav-1pct's lr 5 on the convnet) scores exactly chance: the result says so."""
    warning = chance_warning(0.1, 10, 5.0)
    assert "chance level for 10 classes" in warning and "optim.head_lr=5," in warning and "optim.head_lr=0.5)" in warning
    assert chance_warning(0.149, 10, 5.0) and chance_warning(0.15, 10, 5.0) is None
    assert chance_warning(0.0, 1, 0.2) is None


def test_a_rerun_refuses_other_weights_at_the_same_init_path(pretrained, tmp_path, capsys):
    """The run in OUT started from the weights --init held then; other weights copied to that path since must
    not be answered with the old run's score."""
    init = tmp_path / "init.pt"
    init.write_bytes(pretrained.read_bytes())
    args = ["finetune", "--init", init, "--data", DATA, "--test-data", DATA, "--epochs", 1, "--batch-size", 16,
            "--out", tmp_path / "ft", "--device", "cpu", "progress=false"]
    assert run(capsys, *args)[0] == 0
    ckpt = torch.load(pretrained, weights_only=True)
    ckpt["backbone_state"] = {k: torch.zeros_like(v) for k, v in ckpt["backbone_state"].items()}
    torch.save(ckpt, init)
    code, _, err = run(capsys, *args)
    assert one_line_error(code, err, "holds a fine-tuning of other weights"), err



def test_more_epochs_continue_with_resume_with_changes(pretrained, tmp_path, capsys):
    """The refusal of a rerun with other settings names --resume-with-changes, which finetune takes."""
    args = ["finetune", "--init", pretrained, "--data", DATA, "--test-data", DATA, "--batch-size", 16,
            "--out", tmp_path / "ft", "--device", "cpu", "progress=false"]
    assert run(capsys, *args, "--epochs", 1)[0] == 0
    code, _, err = run(capsys, *args, "--epochs", 2)
    assert one_line_error(code, err, "--resume-with-changes"), err
    code, _, err = run(capsys, *args, "--epochs", 2, "--resume-with-changes")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "ft" / "last.pt")["epoch"] == 2
    record = json.loads((tmp_path / "ft" / "finetune.json").read_text())      # not a clean 2-epoch run: epoch 1
    assert record["changes"]["optim.milestones"] == [1.2, 1.6]              # ran with the 1-epoch milestones
    assert [(r["epoch"], r["changes"]["epochs"], r["changes"]["optim.milestones"])
            for r in record["resumed_with_changes"]] == [(1, [1, 2], [[0.6, 0.8], [1.2, 1.6]])]


def test_an_out_holding_a_pretraining_run_is_left_as_it_was(pretrained, tmp_path, capsys):
    """finetune --out on a pretraining run is refused, and writes nothing there (it wrote init.sha1)."""
    before = sorted(p.name for p in pretrained.parent.iterdir())
    code, _, err = run(capsys, "finetune", "--init", pretrained, "--data", DATA, "--test-data", DATA, "--epochs", 1,
                       "--batch-size", 16, "--out", pretrained.parent, "--device", "cpu", "progress=false")
    assert code != 0
    assert sorted(p.name for p in pretrained.parent.iterdir()) == before


def test_a_bad_out_is_one_line_and_a_refused_start_leaves_nothing(pretrained, tmp_path, capsys):
    """--out naming a file gave a FileExistsError traceback (init.sha1 was written before the engine's checks),
    and a start the engine refused (a batch larger than the data) left OUT/init.sha1 behind."""
    args = ["finetune", "--init", pretrained, "--data", DATA, "--test-data", DATA, "--epochs", 1, "--device", "cpu",
            "progress=false"]
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, *args, "--batch-size", 16, "--out", tmp_path / "afile")
    assert one_line_error(code, err, "is a file, not a folder"), err
    code, _, err = run(capsys, *args, "--batch-size", 16, "--out", tmp_path / "afile" / "x")
    assert one_line_error(code, err, "cannot create the run directory"), err
    code, _, err = run(capsys, *args, "--batch-size", 256, "--out", tmp_path / "ft")
    assert code == 2 and "256" in err and not (tmp_path / "ft").exists(), err


def test_the_same_init_spelled_otherwise_continues_and_another_file_is_named(pretrained, tmp_path, capsys, monkeypatch):
    """--init compared by what it names: the absolute path of the run's relative --init is the same file; another
    file with other weights is named as another file, not as a changed one."""
    monkeypatch.chdir(tmp_path)
    args = ["finetune", "--data", DATA, "--test-data", DATA, "--epochs", 1, "--batch-size", 16, "--out", "ft",
            "--device", "cpu", "progress=false"]
    assert run(capsys, *args, "--init", "pre/last.pt")[0] == 0
    code, _, err = run(capsys, *args, "--init", pretrained)
    assert code == 0, err
    ckpt = torch.load(pretrained, weights_only=True)
    ckpt["backbone_state"] = {k: torch.zeros_like(v) for k, v in ckpt["backbone_state"].items()}
    torch.save(ckpt, tmp_path / "other.pt")
    code, _, err = run(capsys, *args, "--init", "other.pt")
    assert one_line_error(code, err, "ft holds a fine-tuning of pre/last.pt, not of other.pt (other weights)"), err
    assert "changed since" not in err
    import shutil                           # the same weights moved elsewhere: continued with --resume-with-changes

    shutil.move(pretrained, tmp_path / "moved.pt")
    code, _, err = run(capsys, *args, "--init", "moved.pt")
    assert one_line_error(code, err, "has init=pre/last.pt, this command init=moved.pt"), err
    code, _, err = run(capsys, *args, "--init", "moved.pt", "--resume-with-changes")
    assert code == 0, err

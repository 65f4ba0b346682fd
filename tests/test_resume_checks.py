"""--resume-with-changes of settings that change the model's shapes: one line, the run kept."""
import pytest

from conftest import one_line_error, run, TINY


@pytest.mark.parametrize("change", ["width=1", "simclr.proj_dim=32"])
def test_resume_with_a_change_of_shapes_is_one_line(tmp_path, capsys, change):
    out = tmp_path / "run"
    common = ["--data", TINY, "--backbone", "convnet", "--epochs", 1, "--batch-size", 16, "--out", out,
              "device=cpu", "progress=false", "optim.warmup_epochs=0"]
    assert run(capsys, "pretrain", "simclr", *common, "width=2")[0] == 0
    config = (out / "config.yaml").read_text()
    code, _, err = run(capsys, "pretrain", "simclr", *common, "--resume-with-changes", "width=2", change)
    assert one_line_error(code, err, "change the model's shapes: they cannot change on resume")
    assert change.split("=")[0] in err
    assert (out / "config.yaml").read_text() == config

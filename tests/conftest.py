import pytest

from selfsup.cli import main


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never write to the user's ~/.cache."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


TINY = "synthetic:64?classes=4&size=16"


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory):
    """A convnet at its random initialisation (``pretrain simclr --epochs 0`` on TINY), for tests that read it."""
    out = tmp_path_factory.mktemp("random") / "run"
    assert main(["pretrain", "simclr", "--data", TINY, "--backbone", "convnet", "--epochs", "0", "--batch-size", "4",
                 "--out", str(out), "progress=false", "device=cpu"]) == 0
    return out / "last.pt"


def tiny_overrides(out, epochs=2, data=TINY, **extra):
    items = {"data": data, "backbone": "convnet", "batch_size": 16, "epochs": epochs, "out": str(out),
             "progress": False, "log_every": 1, "optim.warmup_epochs": 0.5, "optim.lr": 0.1, "device": "cpu"}
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def run(capsys, *argv):
    """``selfsup ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, fragment) -> bool:
    """Exit 2 and a single error line ``selfsup: error: ...`` that contains ``fragment``, last on stderr; the
    notes a run prints before it (a short run's schedule, the CIFAR stem) may come first, a traceback may not."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("selfsup: error:")]
    return (code == 2 and len(errors) == 1 and lines[-1] == errors[0] and fragment in errors[0]
            and "Traceback" not in err)

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never write to the user's ~/.cache."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


TINY = "synthetic:64?classes=4&size=16"


def tiny_overrides(out, epochs=2, data=TINY, **extra):
    items = {"data": data, "backbone": "convnet", "batch_size": 16, "epochs": epochs, "out": str(out),
             "progress": False, "log_every": 1, "optim.warmup_epochs": 0.5, "optim.lr": 0.1, "device": "cpu"}
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]

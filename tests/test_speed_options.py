"""The speed options (issue 20) change how a run computes, never what: data_on_device, optim.fused, compile;
and the GPU speed recipe configs/speedrun/simclr_cifar10_resnet18.yaml runs on a CPU as it stands."""
import os
import signal

import pytest
import torch

from conftest import tiny_overrides
from selfsup.checkpoint import load_checkpoint
from selfsup.config import find_config, resolve_config
from selfsup.engine import trainer as trainer_module
from selfsup.engine.trainer import Trainer, autocast_dtype, cpu_has_bf16_tiles
from selfsup.errors import SelfSupError
from selfsup.methods import get_method


def train(out, epochs=1, **kw):
    cfg = resolve_config(get_method("simclr"), overrides=tiny_overrides(out, epochs=epochs, **kw))
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer, load_checkpoint(out / "last.pt")["backbone_state"]


def test_data_on_device_and_foreach_lars_train_the_same_weights(tmp_path):
    _, plain = train(tmp_path / "plain")
    trainer, fast = train(tmp_path / "fast", data_on_device=True, **{"optim.fused": True})
    assert trainer.loader.resident is not None and trainer.optimizer.foreach
    assert all(torch.allclose(plain[k].float(), fast[k].float(), atol=1e-5) for k in plain)


def test_speed_options_do_not_block_resume(tmp_path):
    train(tmp_path / "run")
    cfg = resolve_config(get_method("simclr"), overrides=tiny_overrides(
        tmp_path / "run", epochs=1, data_on_device=True, compile="false", **{"optim.fused": True}))
    cfg.resume = True
    assert Trainer(cfg).fit() == "done"


def test_bad_compile_value_and_streamed_data_on_device_are_one_line_errors(tmp_path):
    with pytest.raises(SelfSupError, match="compile='fast': use false, true, or auto"):
        train(tmp_path / "a", compile="fast")
    from PIL import Image
    for i in range(16):
        (tmp_path / "f" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (i * 10, 0, 0)).save(tmp_path / "f" / f"c{i % 2}" / f"{i}.png")
    with pytest.raises(SelfSupError, match="data_on_device=true needs an in-memory dataset"):
        train(tmp_path / "b", data_on_device=True, data=f"{tmp_path / 'f'}?stream=1&workers=0")


def test_speedrun_config_runs_on_cpu(tmp_path):
    """The shipped recipe, found by name, shortened to one epoch of a small set (and a CPU-sized batch): on a
    CPU compile=auto stays off and precision=auto is bf16 where the CPU has AMX tiles, else fp32; the resident data
    and the foreach LARS are used."""
    path = find_config("speedrun/simclr_cifar10_resnet18")
    cfg = resolve_config(get_method("simclr"), str(path), overrides=[
        "data=synthetic:64?classes=4&size=32", f"out={tmp_path / 'run'}", "epochs=1", "batch_size=32",
        "device=cpu", "progress=false"])
    assert cfg.compile == "auto" and cfg.data_on_device and cfg.optim.fused and cfg.cifar_stem
    trainer = Trainer(cfg)
    assert trainer.fit() == "done"
    assert trainer.amp_dtype == (torch.bfloat16 if cpu_has_bf16_tiles() else None)
    assert trainer.loader.resident is not None
    assert not hasattr(trainer.backbone, "_compiled_call_impl") or trainer.backbone._compiled_call_impl is None


def test_loader_threads_set_the_view_thread_alone(tmp_path):
    """loader_threads: the thread that makes the views runs with that many intra-op threads; the step keeps its own."""
    from selfsup.data.datasets import load_dataset
    from selfsup.data.loader import BatchLoader

    seen = []

    def maker(images, g):
        seen.append(torch.get_num_threads())
        return [images.float()]

    before = torch.get_num_threads()
    loader = BatchLoader(load_dataset("synthetic:32?classes=4&size=8"), 8, maker, device="cpu")
    loader.threads = before + 1          # a count no thread has yet, whatever the machine's
    assert len(list(loader.epoch(0))) == 4 and seen == [before + 1] * 4
    assert torch.get_num_threads() == before
    seen.clear()
    loader.threads = 0                   # torch's own count, as the step's
    list(loader.epoch(0))
    assert seen == [before] * 4


def test_loader_threads_reach_the_loader_and_do_not_block_resume(tmp_path):
    trainer, _ = train(tmp_path / "run", loader_threads=1)
    assert trainer.loader.threads == 1
    cfg = resolve_config(get_method("simclr"), overrides=tiny_overrides(tmp_path / "run", epochs=1, loader_threads=0))
    cfg.resume = True
    assert Trainer(cfg).fit() == "done"
    with pytest.raises(SelfSupError, match="loader_threads"):
        train(tmp_path / "bad", loader_threads=-1)


def test_precision_auto_follows_the_cpu(monkeypatch):
    """precision=auto: bf16 on a CPU with AMX tiles, fp32 on one without; bf16 may be asked for on any CPU, fp16 not."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(trainer_module, "cpu_has_bf16_tiles", lambda: True)
    assert autocast_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(trainer_module, "cpu_has_bf16_tiles", lambda: False)
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16 and autocast_dtype("fp32", cpu) is None
    with pytest.raises(SelfSupError, match="precision=fp16 needs a CUDA device"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(SelfSupError, match="unknown precision 'half'"):
        autocast_dtype("half", cpu)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_runs_resume_exactly_in_either_precision(tmp_path, precision):
    """A CPU run in bf16 autocast (or fp32) stopped by SIGTERM after its first epoch and resumed ends with the
    weights of an uninterrupted run: bf16 on the CPU changes the arithmetic, not the determinism of resume."""
    _, whole = train(tmp_path / "whole", epochs=2, precision=precision)

    def kill_after_first_epoch(trainer):
        if trainer.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    def cfg(**extra):
        return resolve_config(get_method("simclr"), overrides=tiny_overrides(tmp_path / "cut", precision=precision,
                                                                             **extra))
    assert Trainer(cfg()).fit(on_epoch_end=kill_after_first_epoch) == "interrupted"
    assert Trainer(cfg(resume=True)).fit() == "done"
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")["backbone_state"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_precision_auto_keeps_fp32_for_methods_that_lose_by_bf16(tmp_path, monkeypatch):
    """On an AMX CPU precision=auto trains Jigsaw and Jigsaw++ (auto_bf16_on_cpu False) in fp32 and SimCLR in bf16;
    precision=bf16 still gives Jigsaw bf16."""
    monkeypatch.setattr(trainer_module, "cpu_has_bf16_tiles", lambda: True)

    def amp(method, **extra):
        overrides = tiny_overrides(tmp_path / method / str(len(extra)), epochs=1, image_size=32, **extra)
        return Trainer(resolve_config(get_method(method), flags={"method": method}, overrides=overrides)).amp_dtype
    assert amp("jigsaw") is None and amp("jigsaw_pp") is None and amp("simclr") == torch.bfloat16
    assert amp("jigsaw", precision="bf16") == torch.bfloat16


def test_precision_auto_keeps_fp32_for_the_imagenet_stem_at_small_sizes(tmp_path, monkeypatch, capsys):
    """On an AMX CPU precision=auto keeps fp32 for a ResNet with the ImageNet stem at 32 px or less (bf16 measured at
    0.8x to 1.0x there) and says so; the CIFAR stem and larger images keep bf16; precision=bf16 still gives bf16."""
    from selfsup.models.backbones import small_maps_on_cpu

    assert small_maps_on_cpu("resnet18", False, 32) and not small_maps_on_cpu("resnet18", False, 64)
    assert not small_maps_on_cpu("resnet18", True, 32) and not small_maps_on_cpu("convnet", None, 32)
    monkeypatch.setattr(trainer_module, "cpu_has_bf16_tiles", lambda: True)

    def amp(name, **extra):
        overrides = tiny_overrides(tmp_path / name, epochs=1, backbone="resnet18", **extra)
        return Trainer(resolve_config(get_method("simclr"), flags={"method": "simclr"}, overrides=overrides)).amp_dtype
    assert amp("imagenet_stem", cifar_stem=False, image_size=32) is None
    assert "precision auto: fp32" in capsys.readouterr().out
    assert amp("cifar_stem", cifar_stem=True, image_size=32) == torch.bfloat16
    assert amp("larger", cifar_stem=False, image_size=64) == torch.bfloat16
    assert amp("asked", cifar_stem=False, image_size=32, precision="bf16") == torch.bfloat16

"""The supervised baseline: cross-entropy on the labels, classes from the data, one-line refusals."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from selfsup.checkpoint import load_checkpoint
from selfsup.config import resolve_config
from selfsup.data.loader import Batch
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.methods import build_method, get_method
from selfsup.methods.supervised import dataset_classes


def test_loss_is_the_cross_entropy_of_the_head_on_the_backbone():
    torch.manual_seed(0)
    m = build_method("supervised", backbone="convnet", image_size=16, num_classes=5).eval()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    out = m(Batch([x], y, torch.arange(6)))
    logits = m.head(m.backbone(x))
    assert logits.shape == (6, 5)
    by_hand = -torch.log_softmax(logits, 1)[torch.arange(6), y].mean()       # -1/N sum log p(y_i | x_i)
    assert torch.allclose(out["loss"], by_hand, atol=1e-6)
    assert out["train_top1"] == (logits.argmax(1) == y).float().mean()
    mlp = build_method("supervised", backbone="convnet", image_size=16, num_classes=5, head="mlp", hidden_dim=32)
    assert [type(l).__name__ for l in mlp.head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    smooth = build_method("supervised", backbone="convnet", image_size=16, num_classes=5, label_smoothing=0.1).eval()
    smooth.load_state_dict(m.state_dict())
    assert torch.allclose(smooth(Batch([x], y, torch.arange(6)))["loss"],
                          F.cross_entropy(logits, y, label_smoothing=0.1), atol=1e-6)


def test_classes_come_from_the_labels_and_unlabeled_data_is_refused():
    assert dataset_classes(np.array([0, 3, 3, 1])) == 4          # label 2 is empty: still 4 outputs
    with pytest.raises(SelfSupError, match="needs a label for every image, and 1 of 3"):
        dataset_classes(np.array([0, -1, 1]))
    with pytest.raises(SelfSupError, match="unknown head"):
        build_method("supervised", backbone="convnet", num_classes=3, head="deep")


def test_supervised_training_learns_the_labels_and_checkpoints_like_any_method(tmp_path):
    """On a small labelled set the training loss falls and the head has one output per class;
    the checkpoint is a normal one (eval tap, backbone state)."""
    cfg = resolve_config(get_method("supervised"), overrides=tiny_overrides(
        tmp_path / "run", epochs=6, method="supervised", data="synthetic:64?classes=4&size=16", **{"optim.lr": 0.05}))
    Trainer(cfg).fit()
    import json
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl") if '"loss"' in line]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["model"]["head.weight"].shape == (4, 192) and ckpt["eval_tap"] == "conv4"
    with pytest.raises(SelfSupError, match="num_classes=2 but the labels go up to 3"):
        Trainer(resolve_config(get_method("supervised"), overrides=tiny_overrides(
            tmp_path / "small", method="supervised", **{"supervised.num_classes": 2})))

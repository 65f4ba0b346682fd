"""CC+: pseudo-labels from a teacher's k-means, the label file's checks, a student that eval knn reads."""
import json

import numpy as np
import pytest

from conftest import run, tiny_overrides
from selfsup.config import resolve_config
from selfsup.data.datasets import load_dataset, read_label_file
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.cluster.transfer import pseudo_labels
from selfsup.eval.features import pool_features
from selfsup.methods import get_method

DATA = "synthetic:64?classes=4&size=16"


@pytest.fixture
def teacher(tmp_path):
    Trainer(resolve_config(get_method("simclr"), overrides=tiny_overrides(tmp_path / "t", epochs=1, data=DATA))).fit()
    return str(tmp_path / "t" / "last.pt")


def test_max_pool_gives_ccs_teacher_features():
    import torch
    assert pool_features(torch.randn(2, 384, 13, 13), "max").shape == (2, 9600)       # AlexNet conv4: 5 x 5 x 384
    assert pool_features(torch.randn(2, 512, 28, 28), "max").shape == (2, 8192)       # VGG16 conv4: 4 x 4 x 512


def test_pseudo_labels_are_nearest_centroids_and_the_file_guards_its_teacher(teacher, tmp_path):
    out = tmp_path / "pl.npz"
    info = pseudo_labels(teacher, DATA, out, clusters=5)
    f = read_label_file(out)
    assert len(f["labels"]) == 64 and f["num_classes"] == 5 and f["labels"].max() < 5 and not info["reused"]
    d = load_dataset(f"{DATA}&labels={out}")
    assert np.array_equal(d.labels, f["labels"]) and d.classes == ["0", "1", "2", "3", "4"]
    assert pseudo_labels(teacher, DATA, out, clusters=5)["reused"]                 # same teacher, same images
    with pytest.raises(SelfSupError, match="another teacher or setting"):
        pseudo_labels("random:convnet", DATA, out, clusters=5)
    with pytest.raises(SelfSupError, match="written for other images"):
        load_dataset(f"synthetic:64?classes=4&size=16&seed=3&labels={out}")
    other = tmp_path / "other.npz"                                                 # label another set (Table 2)
    info = pseudo_labels(teacher, DATA, other, label_spec="synthetic:32?classes=4&size=16&seed=1", clusters=5)
    assert info["n_label"] == 32 and len(read_label_file(other)["labels"]) == 32


def test_transfer_command_trains_a_student_that_eval_reads(teacher, tmp_path, capsys):
    out = tmp_path / "tr"
    code, stdout, err = run(capsys, "transfer", "--teacher", teacher, "--student", "convnet", "--cluster-data", DATA,
                            "--clusters", 6, "--epochs", 2, "--batch-size", 16, "--out", out, "--device", "cpu",
                            "progress=false", "width=0.5")
    assert code == 0, err
    assert "of 6 clusters used" in stdout and (out / "student" / "last.pt").exists()
    code, stdout, err = run(capsys, "eval", "knn", "--checkpoint", out / "student" / "last.pt", "--train-data", DATA,
                            "--test-data", DATA, "--json")
    assert code == 0, err
    assert 0 <= json.loads(stdout.strip().splitlines()[-1])["top1"] <= 1
    code, stdout, err = run(capsys, "transfer", "--teacher", "random:convnet", "--student", "convnet",
                            "--cluster-data", DATA, "--clusters", 4, "--epochs", 1, "--batch-size", 16,
                            "--out", tmp_path / "rand", "--device", "cpu", "progress=false")
    assert code == 0, err
    assert "lr 0.001" in stdout


def test_hog_bag_of_words_teacher(tmp_path):
    """HOG descriptors per block, a codebook, L1 histograms; pseudo-labels from them."""
    from selfsup.cluster.hog import hog_bow_features, hog_codebook, hog_descriptors

    d = load_dataset(DATA)
    desc = hog_descriptors(d.images[:3])
    assert desc.shape == (3, 9, 36)               # 16 px: 4 px cells, 4 x 4 cells, 3 x 3 blocks of 2 x 2 x 9
    book = hog_codebook(d, words=8)
    h = hog_bow_features(d, book)
    assert h.shape == (64, 8) and np.allclose(h.sum(1).numpy(), 1.0)
    info = pseudo_labels("hog:8", DATA, tmp_path / "hog.npz", clusters=4)
    assert info["feature_dim"] == 8 and len(read_label_file(tmp_path / "hog.npz")["labels"]) == 64


def test_regress_objective_trains_a_student_on_the_teachers_features(teacher, tmp_path, capsys):
    """The distillation baseline: MSE between the student's linear map and the frozen teacher's pooled features."""
    import torch
    from selfsup.methods import build_method
    m = build_method("distill", backbone="convnet", image_size=16, teacher=teacher).train()
    assert not m.teacher.training and not any(p.requires_grad for p in m.teacher.parameters())
    x = torch.randn(4, 3, 16, 16)
    from selfsup.data.loader import Batch
    loss = m(Batch([x], torch.zeros(4, dtype=torch.long), torch.arange(4)))["loss"]
    target = pool_features(m.teacher.forward_taps(x, (m.tap,))[m.tap], "max")
    assert torch.allclose(loss, ((m.regressor(m.backbone(x)) - target) ** 2).mean(), atol=1e-6)
    code, stdout, err = run(capsys, "transfer", "--teacher", teacher, "--student", "convnet", "--cluster-data", DATA,
                            "--objective", "regress", "--epochs", 1, "--batch-size", 16, "--out", tmp_path / "reg",
                            "--device", "cpu", "progress=false")
    assert code == 0, err
    assert "regressing the teacher's features" in stdout and (tmp_path / "reg" / "student" / "last.pt").exists()


def test_viz_filters_and_clusters(teacher, tmp_path, capsys):
    code, out, err = run(capsys, "viz", "filters", "--checkpoint", teacher, "--out", tmp_path / "f.png")
    assert code == 0, err
    assert "24 filters of (3, 3, 3)" in out and (tmp_path / "f.png").stat().st_size > 1000
    code, out, err = run(capsys, "viz", "clusters", "--checkpoint", teacher, "--data", DATA, "--clusters", 6,
                         "--k", 4, "--out", tmp_path / "c.png")
    assert code == 0, err
    assert "6 clusters at conv4" in out and (tmp_path / "c.png").stat().st_size > 1000
    code, _, err = run(capsys, "viz", "clusters", "--checkpoint", teacher, "--out", tmp_path / "x.png")
    assert code == 2 and "needs --data" in err

"""CC+: pseudo-labels from a teacher's k-means, the label file's checks, a student that eval knn reads."""
import json

import numpy as np
import pytest

from conftest import run, tiny_overrides
from selfsup.config import resolve_config
from selfsup.data.datasets import load_dataset, read_label_file
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.transfer import pseudo_labels
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


# ------------------------------------------------------------------ label files on streamed sets

def _image_folder(root, n=30, classes=3):
    """``n`` PNGs of 16 to 32 px in ``classes`` class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(16, 33, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return sorted(root.rglob("*.png"))


def _streamed_specs(tmp_path):
    """A streamed folder, file list, image tar and shards of the same 30 images."""
    import tarfile

    from selfsup.data.shards import write_shards

    files = _image_folder(tmp_path / "f")
    (tmp_path / "list.txt").write_text("".join(f"{p} {int(p.parent.name[1:])}\n" for p in files))
    with tarfile.open(tmp_path / "f.tar", "w") as tar:
        tar.add(tmp_path / "f", arcname="f")
    write_shards(tmp_path / "f", tmp_path / "shards", 8)
    return [f"{tmp_path / 'f'}?stream=1&workers=0", f"{tmp_path / 'list.txt'}?stream=1&workers=0",
            f"{tmp_path / 'f.tar'}?stream=1&workers=0", f"shards:{tmp_path / 'shards'}?workers=0"]


def test_label_files_work_on_streamed_folders_file_lists_tars_and_shards(tmp_path):
    """``SPEC?labels=FILE`` on every streamed kind: the same images in the same order (shards stay shards, with
    their epoch order), the file's labels in every training batch, checked exactly against the set's fingerprint."""
    import torch

    from selfsup.data.stream import StreamLoader
    from selfsup.data.views import ViewMaker, simclr_views

    specs = _streamed_specs(tmp_path)
    files = []
    for k, spec in enumerate(specs):
        files.append(tmp_path / f"pl{k}.npz")
        pseudo_labels("random:convnet", spec, files[-1], clusters=3)
        f, base = read_label_file(files[-1]), load_dataset(spec)
        assert f["data_fingerprint"] == base.fingerprint and base.streaming
        d = load_dataset(f"{spec}&labels={files[-1]}")
        assert type(d) is type(base) and np.array_equal(d.names, base.names) and d.size == base.size
        assert np.array_equal(d.labels, f["labels"]) and d.classes == ["0", "1", "2"] and d.targets is None
        assert d.fingerprint.startswith(base.fingerprint + "-labels-")             # no cache of the plain set
        assert d.subset([0, 1]).fingerprint != base.subset([0, 1]).fingerprint
        assert np.array_equal(d.epoch_order(0, 1), base.epoch_order(0, 1))
        for batch in StreamLoader(d, 8, ViewMaker(simclr_views(16)), device="cpu", seed=0).epoch(0):
            assert torch.equal(batch.labels, torch.from_numpy(f["labels"][batch.indices.numpy()]))
        if k:                                                          # another set's label file: refused
            with pytest.raises(SelfSupError, match="written for other images"):
                load_dataset(f"{spec}&labels={files[0]}")
    (tmp_path / "f" / "c0" / "000.png").write_bytes((tmp_path / "f" / "c1" / "001.png").read_bytes())
    with pytest.raises(SelfSupError, match="written for other images"):          # an image changed in place
        load_dataset(f"{specs[0]}&labels={files[0]}")


def test_the_streamed_student_gets_the_in_memory_paths_images_and_pseudo_labels(tmp_path):
    _image_folder(tmp_path / "f")
    memory, streamed = f"{tmp_path / 'f'}?size=24", f"{tmp_path / 'f'}?size=24&stream=1&workers=0"
    pseudo_labels("random:convnet", memory, tmp_path / "m.npz", clusters=4)
    pseudo_labels("random:convnet", streamed, tmp_path / "s.npz", clusters=4)
    m, s = load_dataset(f"{memory}&labels={tmp_path / 'm.npz'}"), load_dataset(f"{streamed}&labels={tmp_path / 's.npz'}")
    assert s.streaming and not getattr(m, "streaming", False)
    assert np.array_equal(s.labels, m.labels) and s.classes == m.classes
    assert np.array_equal(np.asarray(s.images[:]), np.asarray(m.images))


def test_transfer_and_supervised_pretraining_on_a_streamed_folder(random_ckpt, tmp_path, capsys):
    """CC+ with ``--cluster-data DIR?stream=1`` trains its student on the streamed images; the label file it
    wrote trains ``pretrain supervised --data DIR?stream=1&labels=FILE``."""
    _image_folder(tmp_path / "f")
    spec, out = f"{tmp_path / 'f'}?stream=1&workers=0", tmp_path / "tr"
    code, stdout, err = run(capsys, "transfer", "--teacher", random_ckpt, "--student", "convnet", "--cluster-data",
                            spec, "--clusters", 3, "--epochs", 1, "--batch-size", 8, "--out", out, "--device", "cpu",
                            "progress=false")
    assert code == 0 and "Traceback" not in err, err
    assert "student convnet" in stdout and (out / "student" / "last.pt").exists()
    code, _, err = run(capsys, "pretrain", "supervised", "--data", f"{spec}&labels={out / 'pseudo_labels.npz'}",
                       "--backbone", "convnet", "--epochs", 1, "--batch-size", 8, "--out", tmp_path / "sup",
                       "progress=false", "device=cpu")
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "sup" / "last.pt").exists()

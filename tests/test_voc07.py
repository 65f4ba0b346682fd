"""voc07:DIR (VOC2007 layout, METHODS.md 6.1), multi-label targets, label_matrix and the mosaic builder."""
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data.datasets import ImageArrayDataset, label_matrix, load_dataset
from selfsup.data.mosaic import build_mosaics, main as mosaic_main, voc_class_names
from selfsup.errors import SelfSupError

SOURCE = "synthetic:120?classes=5&size=16&seed=3"


@pytest.fixture(scope="module")
def source():
    return load_dataset(SOURCE)


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("mosaics") / "voc"
    splits = build_mosaics(source, out, trainval=24, test=12, grid=2, difficult=0.3, seed=1, source=SOURCE)
    return out, splits


def expected_targets(split, classes):
    """Targets recomputed tile by tile: 1 if an unoccluded tile shows the class, -1 if only occluded ones, else 0."""
    order = [split.classes.index(c) for c in classes]
    targets = np.zeros((len(split.ids), len(order)), dtype=np.int8)
    for i in range(len(split.ids)):
        for col, c in enumerate(order):
            occluded = [bool(o) for label, o in zip(split.tile_labels[i], split.occluded[i]) if label == c]
            targets[i, col] = 0 if not occluded else (-1 if all(occluded) else 1)
    return targets


def read_class_files(root, split):
    main = Path(root) / "ImageSets" / "Main"
    return {f.name[:-len(f"_{split}.txt")]: [int(line.split()[1]) for line in f.read_text().splitlines()]
            for f in main.glob(f"*_{split}.txt")}


def one_line(info, *fragments):
    message = str(info.value)
    return "\n" not in message and all(f in message for f in fragments)


# ------------------------------------------------------------------ mosaics round-trip through voc07:

@pytest.mark.parametrize("split", ["trainval", "test"])
def test_mosaics_round_trip(built, source, tmp_path, split):
    out, splits = built
    drawn = splits[split]
    d = load_dataset(f"voc07:{out}?split={split}", cache_dir=tmp_path / "cache")
    assert d.classes == sorted(voc_class_names(source.classes)) and d.images.shape == (len(drawn.ids), 3, 32, 32)
    assert d.targets.dtype == np.int8 and (d.labels == -1).all()
    assert np.array_equal(d.targets, expected_targets(drawn, d.classes))
    files = read_class_files(out, split)                     # VOC values: 1 present, -1 absent, 0 difficult
    for col, c in enumerate(d.classes):
        assert np.array_equal(np.array(files[c]), np.select([d.targets[:, col] == 1, d.targets[:, col] == 0], [1, -1], 0))
    assert (d.targets != 0).any(axis=1).all()                                # every mosaic shows some class
    assert (d.targets == -1).any() and (d.targets == 0).any()                # difficult=0.3 hits some classes
    images, tiles = np.asarray(d.images, dtype=np.float64), np.asarray(source.images, dtype=np.float64)
    for i in range(len(drawn.ids)):
        for j in range(4):
            r, c = divmod(j, 2)
            tile = images[i, :, 16 * r:16 * r + 16, 16 * c:16 * c + 16]
            err = np.abs(tile - tiles[drawn.sources[i, j]]).mean()
            assert (err > 15) if drawn.occluded[i, j] else (err < 6), (i, j, err)


def test_trainval_and_test_share_no_source_image(built, source):
    _, splits = built
    assert not set(splits["trainval"].sources.ravel()) & set(splits["test"].sources.ravel())
    for s in splits.values():
        assert np.array_equal(source.labels[s.sources], s.tile_labels)
        distinct = [len(set(row)) for row in s.tile_labels]
        assert min(distinct) >= 1 and max(distinct) <= 4
    assert splits["trainval"].ids[-1] == "000024" and splits["test"].ids[0] == "000025"


def test_builder_is_deterministic_and_refuses_a_full_folder(source, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_mosaics(source, a, trainval=6, test=4, difficult=0.5, seed=7)
    b.mkdir()                                                # an empty folder is fine
    build_mosaics(source, b, trainval=6, test=4, difficult=0.5, seed=7)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and len(files) == 10 + 5 * 2 + 3
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    with pytest.raises(SelfSupError) as info:
        build_mosaics(source, a, trainval=6, test=4)
    assert one_line(info, str(a), "remove it or choose another OUT_DIR")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]          # no leftover .tmp-<pid> folder


def test_mosaic_cli_and_held_out_test_source(tmp_path, capsys):
    out = tmp_path / "m"
    test_spec = "synthetic:40?classes=5&size=16&seed=9"
    assert mosaic_main([SOURCE, str(out), "--trainval", "5", "--test", "3", "--test-data", test_spec]) == 0
    assert "wrote 5 trainval + 3 test mosaics (32x32, 5 classes)" in capsys.readouterr().out
    assert test_spec in (out / "README.txt").read_text()
    assert len(load_dataset(f"voc07:{out}?split=test", cache_dir=tmp_path / "c")) == 3
    assert mosaic_main([SOURCE, str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selfsup: error:") and "not an empty folder" in err[0]


def test_class_names_are_voc_style():
    assert voc_class_names(["T-shirt/top", "Ankle boot", "a b", "ab", ""]) == ["tshirttop", "ankleboot", "ab", "ab3",
                                                                               "class4"]


# ------------------------------------------------------------------ a hand-written VOC folder

def write_voc(root, cat=(1, -1, 0), dog=(-1, 1, 1), with_list=True):
    """3 images of different, non-square sizes; each has a red left half and a blue right half."""
    (root / "JPEGImages").mkdir(parents=True)
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    ids = ["000001", "000002", "000003"]
    for i, (w, h) in zip(ids, [(40, 30), (30, 20), (50, 40)]):
        a = np.zeros((h, w, 3), dtype=np.uint8)
        a[:, :w // 2, 0] = 255
        a[:, w // 2:, 2] = 255
        Image.fromarray(a).save(root / "JPEGImages" / f"{i}.jpg", quality=95)
    for name, values in (("cat", cat), ("dog", dog)):
        (main / f"{name}_trainval.txt").write_text("".join(f"{i} {v:2d}\n" for i, v in zip(ids, values)))
    if with_list:
        (main / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root


def test_voc_values_become_goyal_targets(tmp_path):
    write_voc(tmp_path / "devkit" / "VOCdevkit" / "VOC2007")
    d = load_dataset(str(tmp_path / "devkit"), cache_dir=tmp_path / "cache")            # format and root detected
    assert d.classes == ["cat", "dog"] and d.targets.tolist() == [[1, 0], [0, 1], [-1, 1]]
    assert d.images.shape == (3, 3, 30, 30)                  # min(224, median short side 30), squashed
    first = np.asarray(d.images[0], dtype=int)
    assert first[0, :, :13].min() > 200 and first[2, :, 17:].min() > 200          # both halves kept: no crop
    again = load_dataset(f"voc07:{tmp_path / 'devkit' / 'VOCdevkit'}?size=8", cache_dir=tmp_path / "cache")
    assert again.images.shape == (3, 3, 8, 8) and np.array_equal(again.targets, d.targets)
    cached = load_dataset(str(tmp_path / "devkit"), cache_dir=tmp_path / "cache")
    assert cached.fingerprint == d.fingerprint and np.array_equal(cached.targets, d.targets)


def test_ids_from_class_files_and_squash_to_voc_size(tmp_path):
    root = write_voc(tmp_path / "voc", with_list=False)
    d = load_dataset(f"voc07:{root}", cache_dir=tmp_path / "cache")
    assert d.targets.tolist() == [[1, 0], [0, 1], [-1, 1]]


@pytest.mark.parametrize("breakage, fragments", [
    ("mismatch", ["dog_trainval.txt", "lacks image 000003", "must list the same images"]),
    ("missing", ["000002.jpg", "does not exist", "restore it"]),
    ("split", ["no split 'testing'", "split=trainval, test, train or val"]),
    ("nosplit", ["no <class>_test.txt files"]),
    ("value", ["cat_trainval.txt line 2", "<1|-1|0>"]),
    ("subset", ["val_per_class needs single labels", "split=trainval|test"]),
    ("layout", ["is not a VOC2007 folder"]),
])
def test_bad_voc_folders_give_one_line_errors(tmp_path, breakage, fragments):
    root = write_voc(tmp_path / "voc")
    spec = f"voc07:{root}"
    main = root / "ImageSets" / "Main"
    if breakage == "mismatch":
        (main / "dog_trainval.txt").write_text("000001 -1\n000002  1\n")
    elif breakage == "missing":
        (root / "JPEGImages" / "000002.jpg").unlink()
    elif breakage == "split":
        spec += "?split=testing"
    elif breakage == "nosplit":
        spec += "?split=test"
    elif breakage == "value":
        (main / "cat_trainval.txt").write_text("000001 1\n000002 2\n000003 0\n")
    elif breakage == "subset":
        spec += "?val_per_class=1&part=train"
    else:
        spec = f"voc07:{root / 'JPEGImages'}"
    with pytest.raises(SelfSupError) as info:
        load_dataset(spec, cache_dir=tmp_path / "cache")
    assert one_line(info, *fragments), str(info.value)


def test_corrupt_image_drops_its_target_row(tmp_path):
    root = write_voc(tmp_path / "voc")
    (root / "JPEGImages" / "000002.jpg").write_bytes(b"not a jpeg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = load_dataset(f"voc07:{root}", cache_dir=tmp_path / "cache")
    assert any("skipped 1 corrupt image" in str(w.message) for w in caught)
    assert len(d) == 2 and d.targets.tolist() == [[1, 0], [-1, 1]] and len(d.labels) == 2


# ------------------------------------------------------------------ targets through subset(), label_matrix

def test_subset_keeps_targets_aligned_and_label_matrix(tmp_path):
    d = load_dataset(f"voc07:{write_voc(tmp_path / 'voc')}", cache_dir=tmp_path / "cache")
    s = d.subset([2, 0])
    assert s.targets.tolist() == [[-1, 1], [1, 0]] and np.array_equal(np.asarray(s.images), np.asarray(d.images)[[2, 0]])
    assert s.subset([1]).targets.tolist() == [[1, 0]] and label_matrix(s).tolist() == [[-1, 1], [1, 0]]
    single = ImageArrayDataset(np.zeros((3, 1, 2, 2), np.uint8), np.array([2, 0, 1]), ["a", "b", "c"], "x")
    assert single.targets is None and single.subset([0]).targets is None
    assert label_matrix(single).tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]] and label_matrix(single).dtype == np.int8
    unlabeled = ImageArrayDataset(np.zeros((2, 1, 2, 2), np.uint8), np.array([0, -1]), ["a"], "y")
    with pytest.raises(SelfSupError) as info:
        label_matrix(unlabeled)
    assert one_line(info, "unlabeled")

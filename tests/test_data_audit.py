"""The data audit's defects: each test fails without its fix."""
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from selfsup.data.datasets import load_dataset
from selfsup.data.stream import decode_center, decode_image
from selfsup.errors import SelfSupError


def write_gray16(path, values8):
    """A 16-bit grayscale PNG holding 8-bit values x 257 (as a 16-bit scan of them would)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values8.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode == "I;16"


def test_16_bit_pngs_are_scaled_to_8_bits_on_both_paths(tmp_path):
    rng = np.random.default_rng(0)
    values = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(4)]
    for i, v in enumerate(values):
        write_gray16(tmp_path / "root" / f"c{i % 2}" / f"{i}.png", v)
    order = [0, 2, 1, 3]                       # sorted per class
    expected = np.stack([values[i] for i in order])[:, None]
    for stream in ("0", "1"):
        d = load_dataset(f"{tmp_path / 'root'}?stream={stream}", cache_dir=tmp_path / "cache")
        assert np.array_equal(np.asarray(d.images), expected), stream
    blob = (tmp_path / "root" / "c0" / "0.png").read_bytes()
    assert np.array_equal(decode_image(blob, "L")[0], values[0])
    assert np.array_equal(decode_image(blob, "RGB")[1], values[0])
    assert abs(decode_center(blob, "L", 8, 0.875).astype(float).mean() - values[0].mean()) < 20
    # a 32-bit "I" image holding 16-bit values is scaled the same way
    buffer = io.BytesIO()
    Image.fromarray(values[1].astype(np.int32) * 257).save(buffer, format="TIFF")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "I"
    assert np.array_equal(decode_image(buffer.getvalue(), "L")[0], values[1])


def test_an_unreadable_streamed_image_is_replaced_by_one_of_its_own_class(tmp_path):
    """Evaluation reads ``labels`` and the images in order: the stand-in must carry the same label."""
    rng = np.random.default_rng(1)
    for c in range(2):
        for i in range(3):
            path = tmp_path / "root" / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    (tmp_path / "root" / "c0" / "2.png").write_bytes(b"not an image")   # the last of c0: next in the list is c1's
    d = load_dataset(f"{tmp_path / 'root'}?stream=1&workers=0", cache_dir=tmp_path / "cache")
    assert list(d.labels) == [0, 0, 0, 1, 1, 1]
    images = np.asarray(d.images)
    assert np.array_equal(images[2], images[0]) and not np.array_equal(images[2], images[3])
    with pytest.warns(UserWarning, match="of its class"):
        (batch,) = list(d.eval_batches(6))
    assert np.array_equal(batch.numpy()[2], images[0])
    from selfsup.data.stream import _Reader
    image, label, j, bad = _Reader(d, ("shrink", None))[2]
    assert (label, j) == (0, 0) and bad.endswith("2.png")
    (tmp_path / "root" / "c0" / "0.png").write_bytes(b"")
    (tmp_path / "root" / "c0" / "1.png").write_bytes(b"")
    with pytest.raises(SelfSupError, match="no image of class c0"):
        d.images[1]


def numbered_folder(root, classes=2, per_class=10):
    """root/c<c>/<i>.png, 4 x 4 gray images whose every pixel is the image's number 10 i + c."""
    for c in range(classes):
        for i in range(per_class):
            path = root / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), 10 * i + c, dtype=np.uint8)).save(path)
    return root


def numbers(data):
    return {int(im[0, 0, 0]) for im in np.asarray(data.images)}


def test_the_holdout_has_its_own_seed_and_a_seed_on_one_side_does_not_overlap(tmp_path):
    from selfsup.data.subsets import holdout_split

    root, cache = numbered_folder(tmp_path / "root"), tmp_path / "cache"
    whole = load_dataset(str(root), cache_dir=cache)
    train = load_dataset(f"{root}?val_per_class=5&part=train&seed=1", cache_dir=cache)
    val = load_dataset(f"{root}?val_per_class=5&part=val", cache_dir=cache)
    assert not numbers(train) & numbers(val) and len(numbers(train)) == len(numbers(val)) == 10
    # a spec without seed= keeps the holdout it had: holdout_split's with seed 0
    _, val0 = holdout_split(whole.labels, val_per_class=5, seed=0)
    assert numbers(val) == numbers(whole.subset(val0))
    # seed= draws another fraction= sample inside the same train part
    sample = load_dataset(f"{root}?val_per_class=5&part=train&fraction=0.4&seed=1", cache_dir=cache)
    assert numbers(sample) <= numbers(load_dataset(f"{root}?val_per_class=5&part=train", cache_dir=cache))
    # val_seed= draws another holdout, the same on both sides
    other_val = load_dataset(f"{root}?val_per_class=5&part=val&val_seed=3", cache_dir=cache)
    other_train = load_dataset(f"{root}?val_per_class=5&part=train&val_seed=3&seed=2", cache_dir=cache)
    assert numbers(other_val) != numbers(val) and not numbers(other_val) & numbers(other_train)
    with pytest.raises(SelfSupError, match="val_seed= needs a holdout"):
        load_dataset("synthetic:20?val_seed=1")


def test_options_a_format_would_ignore_are_applied_or_refused(tmp_path):
    cache = tmp_path / "cache"
    root = numbered_folder(tmp_path / "root", per_class=2)
    # channels= is applied by in-memory folders and file lists (gray images made colour, and back)
    assert load_dataset(str(root), cache_dir=cache).channels == 1
    colour = load_dataset(f"{root}?channels=3", cache_dir=cache)
    assert colour.channels == 3 and np.asarray(colour.images)[0, 2, 0, 0] == np.asarray(colour.images)[0, 0, 0, 0]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f} {i % 2}\n" for i, f in enumerate(sorted(root.rglob("*.png")))))
    assert load_dataset(f"filelist:{listing}?channels=3", cache_dir=cache).channels == 3
    for bad in ("abc", "2"):
        with pytest.raises(SelfSupError, match=f"channels={bad} must be 1"):
            load_dataset(f"{root}?channels={bad}", cache_dir=cache)
    # synthetic split=test: other images of the same classes
    train, test = load_dataset("synthetic:20?size=8"), load_dataset("synthetic:20?size=8&split=test")
    assert np.array_equal(load_dataset("synthetic:20?size=8&split=train").images, train.images)
    assert not np.array_equal(train.images, test.images) and test.fingerprint != train.fingerprint
    with pytest.raises(SelfSupError, match="split=train .* or split=test"):
        load_dataset("synthetic:20?split=val")
    # refused, naming the formats that take them
    refused = {f"filelist:{listing}?split=test": "split= applies to imagefolder",
               f"{root}?classes=5": "classes= applies to synthetic, not to imagefolder",
               f"{root}?stream=0&shrink=8": "stream=0 (decode into memory): shrink= applies to the streaming path",
               f"{root}?stream=0&workers=2": "workers= applies to the streaming path",
               f"{root}?buffer=10": "buffer= applies to shards",
               "synthetic:10?workers=2": "applies to image files"}
    idx = tmp_path / "fashion"
    idx.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (idx / name).write_bytes(b"")
    refused[f"fashion-mnist:{idx}?size=64"] = "size= applies to imagefolder"
    refused[f"fashion-mnist:{idx}?channels=3"] = "channels= applies to imagefolder"
    for spec, message in refused.items():
        with pytest.raises(SelfSupError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_dataset(spec, cache_dir=cache)


def test_symlinked_class_folders_are_followed_and_a_loop_ends(tmp_path):
    root = numbered_folder(tmp_path / "root", per_class=2)
    other = numbered_folder(tmp_path / "elsewhere", classes=1, per_class=3)
    (root / "linked").symlink_to(other / "c0", target_is_directory=True)
    (root / "c0" / "loop").symlink_to(root, target_is_directory=True)         # root/c0/loop/c0/loop/...
    with pytest.warns(UserWarning, match="loop"):
        d = load_dataset(f"{root}?stream=0", cache_dir=tmp_path / "cache")
    assert d.classes == ["c0", "c1", "linked"] and np.bincount(d.labels).tolist() == [2, 2, 3]
    with pytest.warns(UserWarning, match="loop"):
        u = load_dataset(f"unlabeled:{root}?stream=1", cache_dir=tmp_path / "cache")
    assert len(u) == 7


def test_file_list_lines_naming_a_folder_or_split_by_tabs(tmp_path):
    root = numbered_folder(tmp_path / "root", per_class=2)
    files = sorted(root.rglob("*.png"))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{files[0]} 0\n{root / 'c1'} 1\n")
    with pytest.raises(SelfSupError, match=r"list.txt line 2: .*c1 is a folder, not an image"):
        load_dataset(f"filelist:{listing}", cache_dir=tmp_path / "cache")
    listing.write_text("".join(f"{f}\t{i % 2}\n" for i, f in enumerate(files)))
    d = load_dataset(f"filelist:{listing}", cache_dir=tmp_path / "cache")
    assert list(d.labels) == [0, 1, 0, 1]


@pytest.mark.parametrize("spec", ["synthetic:20?seed=-1", "synthetic:20?seed=4294967296",
                                  "synthetic:20?val_per_class=2&part=val&val_seed=-1",
                                  "synthetic:20?fraction=0.5&seed=99999999999999999999"])
def test_seeds_out_of_range_are_one_line_errors(spec):
    with pytest.raises(SelfSupError, match="out of range: give a whole number from 0 to 4294967295"):
        load_dataset(spec)
    assert len(load_dataset("synthetic:20?seed=4294967295")) == 20


def test_subsets_of_unlabeled_data_and_empty_holdouts_say_what_is_wrong(tmp_path):
    root = numbered_folder(tmp_path / "root", per_class=2)
    for option in ("fraction=0.5", "val_per_class=1&part=train", "val_fraction=0.5&part=val"):
        with pytest.raises(SelfSupError, match="unlabeled .* need labelled data"):
            load_dataset(f"unlabeled:{root}?{option}", cache_dir=tmp_path / "cache")
    with pytest.raises(SelfSupError, match="val_per_class=0 holds out nothing: give at least 1"):
        load_dataset("synthetic:20?val_per_class=0&part=val")
    with pytest.raises(SelfSupError, match="val_fraction=0.0 must be between 0 and 1"):
        load_dataset("synthetic:20?val_fraction=0&part=val")
    with pytest.raises(SelfSupError, match="holds out none of them: raise val_fraction"):
        load_dataset("synthetic:20?val_fraction=0.01&part=val")


def test_bad_label_files_tars_sizes_and_repeated_options_are_one_line_errors(tmp_path):
    text = tmp_path / "labels.npz"
    text.write_text("0\n1\n")
    with pytest.raises(SelfSupError, match=r"labels.npz is not an .npz archive") as info:
        load_dataset(f"synthetic:4?labels={text}")
    assert "pickle" not in str(info.value)
    pickled = tmp_path / "pickled.npz"              # pickles stay refused: they can run code
    np.savez(pickled, labels=np.array([object()] * 4), data_fingerprint="x", teacher="t", num_classes=2)
    with pytest.raises(SelfSupError, match="cannot read label file"):
        load_dataset(f"synthetic:4?labels={pickled}")
    junk = tmp_path / "junk.tar"
    junk.write_text("hello\n")
    with pytest.raises(SelfSupError, match="it is not a tar archive") as info:
        load_dataset(str(junk), cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)
    for spec in ("synthetic:10000000?size=32", "synthetic:100000?size=4096"):
        with pytest.raises(SelfSupError, match="synthetic data is for tests"):
            load_dataset(spec)
    with pytest.raises(SelfSupError, match="data option classes= is given twice"):
        load_dataset("synthetic:10?classes=4&classes=2")


def test_grayscale_stream_batches_collate_without_a_read_only_warning(tmp_path):
    from selfsup.data.stream import collate_padded

    root = numbered_folder(tmp_path / "root", per_class=2)
    d = load_dataset(f"{root}?stream=1&workers=0", cache_dir=tmp_path / "cache")
    assert d.channels == 1
    from selfsup.data.stream import _Reader
    items = [_Reader(d, ("shrink", None))[i] for i in range(len(d))]
    assert not items[0][0].flags.writeable                 # PIL's gray arrays: read-only views
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, sizes, labels, _, _ = collate_padded(items)
    assert images.shape == (4, 1, 4, 4) and labels.tolist() == [0, 0, 1, 1]

"""The streaming path (selfsup.data.stream, selfsup.data.shards): decode from the files, crops at the
images' own sizes, exact resume, unlabeled data, shards, path choice, evaluation order."""
import os
import signal
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_line_error, run, tiny_overrides
from selfsup.config import resolve_config
from selfsup.checkpoint import load_checkpoint
from selfsup.data import stream as stream_mod
from selfsup.data.datasets import ImageArrayDataset, load_dataset
from selfsup.data.shards import expand_braces, main as shards_main
from selfsup.data.stream import StreamImageSet, StreamLoader, collate_padded
from selfsup.data.views import ViewMaker, ViewSpec, crop_boxes, simclr_views
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.methods import get_method


def _pattern(w, h, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_mixed(root):
    """Class folders with gray, RGBA, CMYK JPEG, palette PNG, an EXIF-rotated JPEG, 20 to 600 px, one
    corrupt and one empty file. Returns {relative name: (channels, h, w)} of the good ones."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    expect = {}
    Image.fromarray(_pattern(20, 30, 0)[..., 0], "L").save(root / "a" / "gray.png")
    expect["a/gray.png"] = (3, 30, 20)
    Image.fromarray(np.dstack([_pattern(40, 25, 1), np.full((25, 40), 128, np.uint8)]), "RGBA").save(root / "a" / "rgba.png")
    expect["a/rgba.png"] = (3, 25, 40)
    Image.fromarray(_pattern(600, 300, 2)).convert("CMYK").save(root / "b" / "cmyk.jpg")
    expect["b/cmyk.jpg"] = (3, 300, 600)
    Image.fromarray(_pattern(64, 64, 3)).convert("P").save(root / "b" / "palette.png")
    expect["b/palette.png"] = (3, 64, 64)
    im = Image.fromarray(_pattern(50, 30, 4))
    exif = im.getexif()
    exif[0x0112] = 6                                            # rotate 90: stored 50 x 30, shown 30 x 50
    im.save(root / "b" / "rotated.jpg", exif=exif)
    expect["b/rotated.jpg"] = (3, 30, 50)                       # the stored orientation: no EXIF rotation
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    (root / "b" / "empty.jpg").write_bytes(b"")
    return expect


def make_folder(root, n=24, classes=2, seed=0, flat=False):
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        folder = root if flat else root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = int(rng.integers(16, 60)), int(rng.integers(16, 60))
        name = folder / f"img{i:03d}.{'png' if i % 3 else 'jpg'}"
        Image.fromarray(_pattern(w, h, seed * 1000 + i)).save(name)
        names.append(name)
    return names


class Recorder:
    """A size-aware transform that hands back the padded batch and the sizes."""
    accepts_sizes = True

    def __call__(self, images, g, sizes=None):
        return [images.clone(), sizes.clone()]


def test_mixed_folder_streams_with_right_channels_and_sizes_and_names_bad_files(tmp_path):
    expect = make_mixed(tmp_path / "mixed")
    data = load_dataset(f"{tmp_path / 'mixed'}?stream=1&workers=0")
    assert isinstance(data, StreamImageSet) and len(data) == 7 and data.classes == ["a", "b"]
    assert data.channels == 3
    loader = StreamLoader(data, 7, Recorder(), device="cpu", shuffle=False, drop_last=False, shrink=0)
    with pytest.warns(UserWarning, match="corrupt.jpg.*empty.jpg|empty.jpg.*corrupt.jpg"):
        (batch,) = list(loader.epoch(0))
    images, sizes = batch.views
    names = [data.names[i].decode() for i in batch.indices.tolist()]
    assert "a/corrupt.jpg" not in names and "b/empty.jpg" not in names      # replaced by the next readable one
    for k, name in enumerate(names):
        c, h, w = expect[name]
        assert images.shape[1] == c and tuple(sizes[k].tolist()) == (h, w)
    # the pre-shrink keeps the aspect ratio: short side at most the bound
    shrunk = StreamLoader(data, 7, Recorder(), device="cpu", shuffle=False, drop_last=False, shrink=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, sizes = list(shrunk.epoch(0))[0].views
    cmyk = names.index("b/cmyk.jpg")
    assert tuple(sizes[cmyk].tolist()) == (32, 64) and sizes.min(1).values.max() <= 32


def test_gray_folder_streams_one_channel(tmp_path):
    (tmp_path / "g" / "x").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_pattern(30 + i, 20, i)[..., 0], "L").save(tmp_path / "g" / "x" / f"{i}.png")
    data = load_dataset(f"{tmp_path / 'g'}?stream=1&workers=0")
    assert data.channels == 1 and data.images[0:3].shape == (3, 1, 20, 20)


def test_crops_stay_inside_each_images_true_size(tmp_path):
    sizes = torch.tensor([[10, 40], [40, 10], [5, 5], [64, 64], [33, 17], [64, 2]] * 20)
    h, w = sizes[:, 0], sizes[:, 1]
    boxes = crop_boxes(len(sizes), h, w, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0), "cpu")
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    # padding of a distinctive value (255) never shows: the images hold 0..100 only
    images = torch.full((len(sizes), 3, 64, 64), 255, dtype=torch.uint8)
    g = torch.Generator().manual_seed(1)
    for k, (hh, ww) in enumerate(sizes.tolist()):
        images[k, :, :hh, :ww] = torch.randint(0, 101, (3, hh, ww), generator=g, dtype=torch.uint8)
    spec = ViewSpec(32, jitter_prob=0.0, gray_prob=0.0)
    maker = ViewMaker([spec, ViewSpec(24, patch=2, jitter_prob=0.0, gray_prob=0.0)], mean=(0, 0, 0), std=(1, 1, 1))
    for view in maker(images, torch.Generator().manual_seed(2), sizes=sizes):
        assert view.max() <= 100 / 255 + 1e-5


def test_in_memory_views_unchanged_by_the_sizes_argument():
    """Equal sizes for every image give the in-memory path's boxes exactly."""
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = crop_boxes(50, 30, 40, (0.08, 1.0), (3 / 4, 4 / 3), g1, "cpu")
    b = crop_boxes(50, torch.full((50,), 30), torch.full((50,), 40), (0.08, 1.0), (3 / 4, 4 / 3), g2, "cpu")
    assert torch.equal(a, b)


def test_resume_mid_epoch_gives_the_same_batches_and_views(tmp_path):
    make_folder(tmp_path / "f", n=24)
    data = load_dataset(f"{tmp_path / 'f'}?stream=1&workers=2")
    maker = ViewMaker(simclr_views(16))
    loader = StreamLoader(data, 6, maker, device="cpu", seed=5)
    full = list(loader.epoch(1))
    resumed = list(StreamLoader(data, 6, maker, device="cpu", seed=5).epoch(1, start_step=2))
    assert len(full) == 4 and len(resumed) == 2
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))
    assert not torch.equal(full[0].indices, list(loader.epoch(2))[0].indices)   # a new order per epoch
    inline = loader.load(1, 3, loader.batch_indices(1)[3])                       # no workers: the same
    assert all(torch.equal(x, y) for x, y in zip(inline.views, full[3].views))


def test_trainer_interrupted_and_resumed_on_the_stream_matches(tmp_path):
    make_folder(tmp_path / "f", n=32)
    check_resume_is_exact(tmp_path, f"{tmp_path / 'f'}?stream=1&workers=1")


def check_resume_is_exact(tmp_path, spec):
    """SimCLR on ``spec`` killed after its first epoch and resumed ends with the weights of a straight run."""
    def cfg(out, resume=False):
        c = resolve_config(get_method("simclr"), overrides=tiny_overrides(out, data=spec, image_size=16))
        c.resume = resume
        return c

    Trainer(cfg(tmp_path / "straight")).fit()

    def kill_after_first_epoch(trainer):
        if trainer.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    assert Trainer(cfg(tmp_path / "cut")).fit(on_epoch_end=kill_after_first_epoch) == "interrupted"
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 1          # stopped mid-epoch
    assert Trainer(cfg(tmp_path / "cut", resume=True)).fit() == "done"
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["backbone_state"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["backbone_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unlabeled_folder_pretrains_and_eval_refuses_it(tmp_path, capsys):
    make_folder(tmp_path / "u", n=32, flat=True)
    (tmp_path / "u" / "deeper").mkdir()
    Image.fromarray(_pattern(20, 20, 99)).save(tmp_path / "u" / "deeper" / "extra.png")
    data = load_dataset(f"unlabeled:{tmp_path / 'u'}")
    assert isinstance(data, ImageArrayDataset) and len(data) == 33 and (data.labels == -1).all()
    streamed = load_dataset(f"unlabeled:{tmp_path / 'u'}?stream=1")
    assert len(streamed) == 33 and (streamed.labels == -1).all() and streamed.classes == []
    out = tmp_path / "run"
    code, _, err = run(capsys, "pretrain", "simclr", "--data", f"unlabeled:{tmp_path / 'u'}?stream=1&workers=1",
                       "--backbone", "convnet", "--epochs", "1", "--batch-size", "16", "--out", out, "--device", "cpu",
                       "progress=false", "image_size=16")
    assert code == 0, err
    assert (out / "last.pt").exists()
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", out / "last.pt", "--train-data",
                       f"unlabeled:{tmp_path / 'u'}", "--test-data", f"unlabeled:{tmp_path / 'u'}", "--device", "cpu")
    assert one_line_error(code, err, "no labels")


def test_file_list_without_labels_is_unlabeled(tmp_path):
    files = make_folder(tmp_path / "f", n=4, flat=True)
    (tmp_path / "list.txt").write_text(f"{files[0]}\n{files[1].name}\n{files[2]} 1\n")
    (tmp_path / "f" / "list.txt").write_text(f"{files[0]}\n{files[1].name}\n{files[2]} 1\n")
    data = load_dataset(str(tmp_path / "f" / "list.txt"))
    assert data.labels.tolist() == [-1, -1, 1]
    streamed = load_dataset(f"{tmp_path / 'f' / 'list.txt'}?stream=1&workers=0")
    assert streamed.labels.tolist() == [-1, -1, 1] and streamed.images[0:3].shape[0] == 3


def test_shards_round_trip(tmp_path, capsys):
    make_folder(tmp_path / "src", n=10, classes=3)
    assert shards_main([str(tmp_path / "src"), str(tmp_path / "out"), "--shard-size", "4"]) == 0
    assert "wrote 3 shard(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "classes.txt", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    memory = load_dataset(str(tmp_path / "src"))                    # the folder's order: the shard keys
    source_files = sorted((tmp_path / "src").rglob("*.*"))
    for spec in (f"shards:{tmp_path / 'out'}", f"shards:{tmp_path / 'out'}/shard-{{000000..000002}}.tar",
                 f"shards:{tmp_path / 'out'}/shard-*.tar"):
        data = load_dataset(spec + "?workers=0")
        assert len(data) == 10 and data.classes == ["c0", "c1", "c2"]
        for i in range(len(data)):
            key = int(data.names[i].decode().partition(".")[0])
            assert data.read(i) == source_files[key].read_bytes()
            assert data.labels[i] == memory.labels[key]
        order = data.epoch_order(0, 1)
        assert sorted(order.tolist()) == list(range(10)) and np.array_equal(order, data.epoch_order(0, 1))
        assert not np.array_equal(order, data.epoch_order(0, 2))
    # training batches read from the shards
    loader = StreamLoader(data, 5, ViewMaker(simclr_views(16)), device="cpu", seed=0)
    batches = list(loader.epoch(0))
    assert len(batches) == 2 and batches[0].views[0].shape == (5, 3, 16, 16)
    assert expand_braces("a-{08..10}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar"]
    with pytest.raises(SelfSupError, match="no .tar shards"):
        load_dataset(f"shards:{tmp_path / 'src'}")


def test_an_image_folder_tar_streams_from_member_offsets(tmp_path):
    import tarfile

    files = make_folder(tmp_path / "f", n=6)
    with tarfile.open(tmp_path / "f.tar", "w") as tar:
        tar.add(tmp_path / "f", arcname="f")
    data = load_dataset(f"{tmp_path / 'f.tar'}?stream=1&workers=0")
    assert len(data) == 6 and data.classes == ["c0", "c1"]
    by_name = {f"f/{p.parent.name}/{p.name}": p for p in files}
    for i in range(6):
        assert data.read(i) == by_name[data.names[i].decode()].read_bytes()
    memory = load_dataset(str(tmp_path / "f.tar"))
    assert torch.equal(torch.cat(list(data.eval_batches(4, memory.image_size))), torch.from_numpy(np.array(memory.images)))


def test_eval_batches_in_order_match_the_in_memory_decode(tmp_path):
    make_folder(tmp_path / "f", n=6)
    memory = load_dataset(f"{tmp_path / 'f'}?size=20")
    data = load_dataset(f"{tmp_path / 'f'}?size=20&stream=1&workers=0")
    got = torch.cat(list(data.eval_batches(4, 20)))
    assert torch.equal(got, torch.from_numpy(np.array(memory.images)))
    assert np.array_equal(data.images[2], memory.images[2])
    crops = torch.cat(list(data.eval_batches(4, 16, crop=16 / 20)))            # Resize(20) -> CenterCrop(16)
    assert crops.shape == (6, 3, 16, 16)
    assert torch.equal(crops[0], got[0, :, 2:18, 2:18])


def test_an_exif_rotated_jpeg_gives_the_same_pixels_on_both_paths(tmp_path):
    """A JPEG tagged with EXIF orientation 6 (rotate 90) decodes to identical tensors in memory (stream=0) and
    streamed (stream=1: ``images``, ``eval_batches``, the training decode), in its stored orientation: what
    torchvision's ImageFolder loader and ``decode_jpeg`` give (streaming used to rotate it, memory not)."""
    from torchvision.io import decode_jpeg

    for c in "ab":
        (tmp_path / "ex" / c).mkdir(parents=True)
        a = np.zeros((32, 48, 3), np.uint8)
        a[:, :16] = 255                                             # a white band at the stored left
        im = Image.fromarray(a)
        exif = im.getexif()
        exif[0x0112] = 6
        im.save(tmp_path / "ex" / c / "0.jpg", exif=exif, quality=95)
    memory = load_dataset(f"{tmp_path / 'ex'}?stream=0&size=32", cache_dir=tmp_path / "cache")
    streamed = load_dataset(f"{tmp_path / 'ex'}?stream=1&size=32&workers=0", cache_dir=tmp_path / "cache")
    assert isinstance(memory, ImageArrayDataset) and isinstance(streamed, StreamImageSet)
    m = torch.from_numpy(np.array(memory.images))
    assert torch.equal(torch.from_numpy(np.array(streamed.images[:])), m)
    assert torch.equal(torch.cat(list(streamed.eval_batches(2, 32))), m)
    blob = (tmp_path / "ex" / "a" / "0.jpg").read_bytes()
    full = stream_mod.decode_image(blob, "RGB")
    with Image.open(tmp_path / "ex" / "a" / "0.jpg") as pil:                 # torchvision's pil_loader
        assert np.array_equal(full, np.asarray(pil.convert("RGB")).transpose(2, 0, 1))
    assert full.shape == tuple(decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8)).shape) == (3, 32, 48)
    assert stream_mod.decode_image(blob, "RGB", shrink=16).shape == (3, 16, 24)
    assert stream_mod.decode_center(blob, "RGB", 16, 16 / 20).shape == (3, 16, 16)
    assert m[0, 0, :, :4].float().mean() > 200 and m[0, 0, :, -4:].float().mean() < 50   # band still at the left


def test_the_path_is_chosen_from_the_decoded_size(tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "f", n=6)
    assert isinstance(load_dataset(str(tmp_path / "f")), ImageArrayDataset)         # small: in memory, silent
    assert "data:" not in capsys.readouterr().out
    side = stream_mod.sampled_side(lambda n: (tmp_path / "f" / n).read_bytes(),
                                   [f"c{i % 2}/img{i:03d}.{'png' if i % 3 else 'jpg'}" for i in range(6)])
    assert 16 <= side < 60                          # the median short side, as decoding chooses: not 256
    monkeypatch.setattr(stream_mod, "physical_ram", lambda: 2 * 6 * 3 * side * side)   # the decoded set fits
    assert isinstance(load_dataset(f"{tmp_path / 'f'}?workers=0"), ImageArrayDataset)
    monkeypatch.setattr(stream_mod, "physical_ram", lambda: 6 * 3 * side * side)       # half of it is too little
    data = load_dataset(f"{tmp_path / 'f'}?workers=0")
    out = capsys.readouterr().out.strip().splitlines()
    assert isinstance(data, StreamImageSet) and len(out) == 1 and "streaming" in out[0]
    assert f"decoded at {side} px" in out[0]
    assert data.size == side                        # the stream decodes at the side the choice assumed
    assert isinstance(load_dataset(f"{tmp_path / 'f'}?stream=0"), ImageArrayDataset)
    with pytest.raises(SelfSupError, match="stream=1"):
        load_dataset(f"{tmp_path / 'f'}?stream=yes")
    with pytest.raises(SelfSupError, match="applies to image files"):
        load_dataset("synthetic:8?stream=1")


def test_fixed_size_view_makers_get_centre_crops_and_the_monitor_holds_a_subset(tmp_path):
    """JigClu / Jigsaw view makers take no sizes: they get each image resized and centre-cropped to the
    data's size, the very pixels the in-memory path decodes."""
    from selfsup.data.jigclu import JigCluViews
    from selfsup.eval.monitor import KnnMonitor

    make_folder(tmp_path / "f", n=8)
    memory = load_dataset(f"{tmp_path / 'f'}?size=24")
    data = load_dataset(f"{tmp_path / 'f'}?size=24&stream=1&workers=0")

    class Fixed:
        def __call__(self, images, g):
            return [images.clone()]

    loader = StreamLoader(data, 4, Fixed(), device="cpu", shuffle=False)
    got = torch.cat([b.views[0] for b in loader.epoch(0)])
    assert torch.equal(got, torch.from_numpy(np.array(memory.images)))
    views = StreamLoader(data, 4, JigCluViews(24), device="cpu").load(0, 0, np.arange(4))
    assert views.views[0].shape == (16, 3, 12, 12)
    monitor = KnnMonitor(f"{tmp_path / 'f'}?size=24&stream=1&workers=0", images=8)
    assert isinstance(monitor.memory, ImageArrayDataset) and monitor.memory.images.shape[1:] == (3, 24, 24)


def test_collate_pads_and_reports_sizes():
    a, b = np.ones((3, 4, 6), np.uint8), np.full((3, 7, 2), 2, np.uint8)
    images, sizes, labels, indices, bad = collate_padded([(a, 0, 0, None), (b, 1, 1, "x.jpg")])
    assert images.shape == (2, 3, 7, 6) and sizes.tolist() == [[4, 6], [7, 2]] and bad == ["x.jpg"]
    assert images[0, :, 4:].sum() == 0 and images[1, :, :, 2:].sum() == 0


def _smooth_jpeg(path, w, h, seed, mode="RGB"):
    """A JPEG of a smooth gradient with a little noise (natural-image-like, so both decoders agree closely)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1) + rng.normal(0, 4, (h, w, 3))
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).convert(mode).save(path, quality=90)


def test_device_decode_gives_the_workers_images_sizes_and_replacements(tmp_path):
    """decode=device (here on the CPU: the nvJPEG path's code with libjpeg-turbo) decodes the JPEGs in one batch,
    the rest with PIL, and replaces unreadable files, including a JPEG whose header reads but whose data is cut,
    exactly as the workers path does; pixels agree to within JPEG decoders' rounding."""
    expect = make_mixed(tmp_path / "mixed")
    for k, (w, h) in enumerate([(120, 80), (64, 96)]):
        _smooth_jpeg(tmp_path / "mixed" / "a" / f"photo{k}.jpg", w, h, k)
        expect[f"a/photo{k}.jpg"] = (3, h, w)
    _smooth_jpeg(tmp_path / "mixed" / "b" / "gray.jpg", 50, 40, 7, "L")
    expect["b/gray.jpg"] = (3, 40, 50)
    whole = (tmp_path / "mixed" / "a" / "photo0.jpg").read_bytes()
    (tmp_path / "mixed" / "a" / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    results = {}
    for decode in ("workers", "device"):
        data = load_dataset(f"{tmp_path / 'mixed'}?stream=1&workers=0&decode={decode}")
        for shrink in (0, 32):
            loader = StreamLoader(data, len(data), Recorder(), device="cpu", shuffle=False, drop_last=False,
                                  shrink=shrink)
            assert loader.device_decode == (decode == "device")
            with pytest.warns(UserWarning, match="cut.jpg"):
                (batch,) = list(loader.epoch(0))
            results[decode, shrink] = batch
    for shrink in (0, 32):
        a, b = results["workers", shrink], results["device", shrink]
        assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.views[1], b.views[1])                              # the same true sizes
        names = [data.names[i].decode() for i in a.indices.tolist()]
        assert "a/cut.jpg" not in names and "a/corrupt.jpg" not in names
        for k, name in enumerate(names):
            h, w = a.views[1][k].tolist()
            x, y = a.views[0][k, :, :h, :w].float(), b.views[0][k, :, :h, :w].float()
            if shrink == 0 and not stream_mod.device_ready((tmp_path / "mixed" / name).read_bytes(), "RGB"):
                assert torch.equal(x, y), name                                  # PIL's decode on both paths
            elif name.startswith("a/photo") or name == "b/gray.jpg":
                assert (x - y).abs().mean() < (1.0 if shrink == 0 else 3.0), name


def test_device_ready_sends_only_plain_jpegs_to_the_batched_decoder(tmp_path):
    make_mixed(tmp_path / "m")
    ready = {p.name: stream_mod.device_ready(p.read_bytes(), "RGB") for p in (tmp_path / "m").rglob("*.*")}
    assert ready == {"gray.png": False, "rgba.png": False, "cmyk.jpg": False, "palette.png": False,
                     "rotated.jpg": False, "corrupt.jpg": False, "empty.jpg": False}
    _smooth_jpeg(tmp_path / "rgb.jpg", 20, 20, 0)
    _smooth_jpeg(tmp_path / "gray.jpg", 20, 20, 0, "L")
    assert stream_mod.device_ready((tmp_path / "rgb.jpg").read_bytes(), "RGB")
    assert stream_mod.device_ready((tmp_path / "gray.jpg").read_bytes(), "RGB")
    assert stream_mod.device_ready((tmp_path / "gray.jpg").read_bytes(), "L")
    assert not stream_mod.device_ready((tmp_path / "rgb.jpg").read_bytes(), "L")     # PIL's luma, not the Y plane
    assert stream_mod.shrunk_size(375, 500, 224) == (224, 299) and stream_mod.shrunk_size(100, 50, 224) == (100, 50)


def test_device_decode_resumes_mid_epoch_exactly(tmp_path):
    for i in range(12):
        (tmp_path / "f" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        _smooth_jpeg(tmp_path / "f" / f"c{i % 2}" / f"{i}.jpg", 30 + 3 * i, 40, i)
    data = load_dataset(f"{tmp_path / 'f'}?stream=1&workers=1&decode=device")
    maker = ViewMaker(simclr_views(16))
    full = list(StreamLoader(data, 4, maker, device="cpu", seed=3).epoch(2))
    resumed = list(StreamLoader(data, 4, maker, device="cpu", seed=3).epoch(2, start_step=1))
    for a, b in zip(full[1:], resumed):
        assert torch.equal(a.indices, b.indices)
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))


def test_decode_option_errors_are_one_line(tmp_path, monkeypatch):
    make_folder(tmp_path / "f", n=4)
    with pytest.raises(SelfSupError, match="decode='gpu'.*decode=workers"):
        load_dataset(f"{tmp_path / 'f'}?stream=1&decode=gpu")
    data = load_dataset(f"{tmp_path / 'f'}?stream=1&decode=device")
    monkeypatch.setattr(stream_mod, "device_decode_works", lambda device: False)
    with pytest.raises(SelfSupError, match="cannot decode JPEGs on cpu.*decode=workers"):
        StreamLoader(data, 2, Recorder(), device="cpu")
    auto = load_dataset(f"{tmp_path / 'f'}?stream=1")
    assert not StreamLoader(auto, 2, Recorder(), device="cpu").device_decode      # auto: nvJPEG on CUDA only


@pytest.mark.parametrize("inside", [False, True])
def test_crops_of_a_padded_batch_equal_crops_of_each_image_alone(inside):
    """fill_padding overwrites only the row and column past each image: roi_align then samples a padded batch
    exactly as it samples each image unpadded (boxes reaching the right and bottom edges included)."""
    from selfsup.data.views import fill_padding, resized_crop

    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[20, 33], [40, 12], [40, 40], [7, 40]])
    padded = torch.full((4, 3, 40, 40), 9.0)                      # a value no image holds
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes.tolist()]
    for k, im in enumerate(images):
        padded[k, :, :im.shape[1], :im.shape[2]] = im
    fill_padding(padded, sizes)
    for k, (h, w) in enumerate(sizes.tolist()):
        boxes = torch.tensor([[0.0, 0.0, w, h], [w / 3, h / 2, w, h], [w - 2.5, h - 1.5, w, h]])
        alone = resized_crop(images[k][None], boxes, 8, source=torch.zeros(3, dtype=torch.long), inside=inside)
        batch = resized_crop(padded, boxes, 8, source=torch.full((3,), k), inside=inside)
        torch.testing.assert_close(batch, alone, rtol=0, atol=1e-6)


def test_cpu_stream_crops_are_torchvisions_resized_crop():
    """On the CPU a padded batch's crops are cut from each image and resized on uint8 with antialiasing:
    torchvision's resized_crop on tensors, exactly, and the padding (here 255) is never read."""
    from torchvision.transforms.v2 import functional as TF

    from selfsup.data.views import cut_and_resize

    g = torch.Generator().manual_seed(0)
    sizes = [(375, 500), (60, 41), (300, 224)]
    padded = torch.full((3, 3, 375, 500), 255, dtype=torch.uint8)
    images = [torch.randint(0, 200, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]
    for k, im in enumerate(images):
        padded[k, :, :im.shape[1], :im.shape[2]] = im
    boxes = torch.tensor([[17.0, 5.0, 417.0, 305.0], [0.0, 0.0, 41.0, 60.0], [3.0, 100.0, 50.0, 131.0]])
    out = cut_and_resize(padded, boxes, 224)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 224, 224)
    for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        want = TF.resized_crop(images[k], y1, x1, y2 - y1, x2 - x1, [224, 224], antialias=True)
        assert torch.equal(out[k], want), k
    assert out.max() < 255

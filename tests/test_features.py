import torch

from selfsup.data.datasets import load_dataset
import os

from selfsup.eval.features import extract_features, file_hash
from selfsup.models import build_backbone


def test_features_from_any_tap_and_pooling():
    data = load_dataset("synthetic:20?classes=2&size=16")
    net = build_backbone("convnet").train()
    f, y = extract_features(net, data, batch_size=7)
    assert f.shape == (20, net.out_dim) and torch.equal(y, torch.from_numpy(data.labels))
    assert net.training                                   # mode restored
    f2, _ = extract_features(net, data, tap="conv2", pool="9k")
    assert f2.shape == (20, 48 * 16)                      # 4 x 4 map of conv2 kept (48 channels)
    f3, _ = extract_features(net, data, image_size=24)
    assert f3.shape == f.shape and not torch.allclose(f3, f)


def test_features_are_in_eval_mode_and_batch_independent():
    data = load_dataset("synthetic:12?classes=3&size=16")
    net = build_backbone("convnet")
    a, _ = extract_features(net, data, batch_size=12)
    b, _ = extract_features(net, data, batch_size=5)      # BN in eval mode: batch size does not matter
    assert torch.allclose(a, b, atol=1e-5)


def test_feature_cache(tmp_path, monkeypatch):
    data = load_dataset("synthetic:10?classes=2&size=16")
    net = build_backbone("convnet")
    a, _ = extract_features(net, data, cache_key="ckpt1", cache_dir=tmp_path)
    assert len(list((tmp_path / "features").iterdir())) == 1

    def fail(*args, **kw):
        raise AssertionError("backbone ran again")

    monkeypatch.setattr(net, "forward_taps", fail)
    b, _ = extract_features(net, data, cache_key="ckpt1", cache_dir=tmp_path)
    assert torch.equal(a, b)
    other = load_dataset("synthetic:10?classes=2&size=16&seed=1")
    monkeypatch.undo()
    extract_features(net, other, cache_key="ckpt1", cache_dir=tmp_path)
    assert len(list((tmp_path / "features").iterdir())) == 2


def test_a_killed_extractions_partial_cache_file_is_removed_by_the_next(tmp_path):
    import subprocess
    import sys

    from selfsup.tempfiles import writer_suffix

    data = load_dataset("synthetic:10?classes=2&size=16")
    net = build_backbone("convnet")
    extract_features(net, data, cache_key="ckpt1", cache_dir=tmp_path)
    entry = next((tmp_path / "features").glob("*.pt"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host_pid = writer_suffix().rsplit(".", 2)[0]                  # this host
    partial = entry.with_name(f".{entry.name}.beef.{host_pid}.{dead.pid}.tmp")   # left by a killed writer
    alive = entry.with_name(f".{entry.name}.cafe.{host_pid}.{os.getppid()}.tmp")  # a writer still running
    partial.write_bytes(b"29 MB of features, cut")
    alive.write_bytes(b"being written")
    extract_features(net, data, cache_key="ckpt1", cache_dir=tmp_path)           # a cache hit cleans up too
    assert not partial.exists() and alive.exists()


def test_goyal_pooling_and_centre_crop_have_their_own_cache_entries(tmp_path):
    data = load_dataset("synthetic:10?classes=2&size=16")
    net = build_backbone("resnet18")
    a, _ = extract_features(net, data, tap="res2", pool="goyal", cache_key="c", cache_dir=tmp_path)
    b, _ = extract_features(net, data, tap="res2", pool="9k", cache_key="c", cache_dir=tmp_path)
    c, _ = extract_features(net, data, tap="res2", pool="goyal", crop=224 / 256, cache_key="c", cache_dir=tmp_path)
    assert a.shape == b.shape == c.shape == (10, 64 * 4 * 4)        # res2 at 16 px: 4 x 4, kept whole
    assert len(list((tmp_path / "features").iterdir())) == 3 and not torch.allclose(a, c)
    p, _ = extract_features(net, data, tap="pool5")
    assert torch.allclose(p, extract_features(net, data)[0], atol=1e-6)     # pool5 = res5, globally pooled


def test_tap_features_one_pass_equal_single_taps_and_cache_per_tap(tmp_path):
    """Every tap of one pass equals its own single-tap extraction; a cached tap is not run again."""
    import torch
    from selfsup.data.datasets import load_dataset
    from selfsup.eval.features import extract_features, extract_tap_features
    from selfsup.models.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("convnet")
    data = load_dataset("synthetic:24?size=16&classes=3")
    taps = ("conv2", "conv3")
    feats, labels = extract_tap_features(backbone, data, taps, pool="goyal", batch_size=10, cache_key="k",
                                         cache_dir=tmp_path)
    for tap in taps:
        single, single_labels = extract_features(backbone, data, tap, pool="goyal", batch_size=7)
        assert torch.allclose(feats[tap], single, atol=1e-5)
        assert torch.equal(labels, single_labels)
    calls = []
    original = backbone.forward_taps
    backbone.forward_taps = lambda x, t=None: calls.append(tuple(t)) or original(x, t)
    again, _ = extract_tap_features(backbone, data, ("conv3", "conv4"), pool="goyal", batch_size=24,
                                    cache_key="k", cache_dir=tmp_path)
    assert calls == [("conv4",)]                      # conv3 came from the cache
    assert torch.equal(again["conv3"], feats["conv3"])


def test_the_cache_key_follows_the_content_not_the_path_size_and_time(tmp_path):
    """Other weights of the same size copied over a checkpoint with its time kept (cp -p, rsync -a, tar) got
    the old features from the cache; the same bytes under another name share them."""
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    a.write_bytes(b"weights one")
    c.write_bytes(b"weights one")
    key = file_hash(a)
    a.write_bytes(b"weights two")                      # the same size ...
    os.utime(a, ns=(0, 0))                             # ... and a time the first hash never saw
    b.write_bytes(b"weights one")
    os.utime(b, ns=(0, 0))
    assert file_hash(a) != key and file_hash(b) == key == file_hash(c)
    b.write_bytes(b"weights two")
    os.utime(b, ns=(0, 0))                             # path, size and time as before: the content decides
    assert file_hash(b) != key


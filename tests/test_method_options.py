"""Bad method settings are one-line errors naming the key, before anything is written (config
checks), or when the Trainer builds the method (settings that need the data or the image size)."""
import json
import re

import numpy as np
import pytest
import yaml

from selfsup.config import check_config, resolve_config
from selfsup.engine.trainer import Trainer
from selfsup.errors import SelfSupError
from selfsup.methods import build_method, get_method

DATA = "synthetic:128?classes=4&size=32"


def _cfg(method, *overrides, tmp_path=None, data=DATA):
    flags = {"method": method, "data": data, "backbone": "convnet", "epochs": 1, "batch_size": 32,
             "out": str(tmp_path / "run") if tmp_path else "runs/never", "device": "cpu", "progress": False}
    return resolve_config(get_method(method), flags=flags, overrides=list(overrides))


BAD_SETTINGS = [
    # 2: one view
    ("simclr", "simclr.views=patch:14x1", "simclr.views"),
    ("simclr", "simclr.views=multicrop:1x32", "simclr.views"),
    ("byol", "byol.views=patch:14x1", "byol.views"),
    ("moco_v2", "moco_v2.views=multicrop:2x32+2x16", "moco_v2.views"),
    # 3
    ("swav", "swav.nmb_prototypes=0", "swav.nmb_prototypes"),
    ("swav", "swav.nmb_prototypes=-3", "swav.nmb_prototypes"),
    ("sela_v2", "sela_v2.nmb_prototypes=[0]", "sela_v2.nmb_prototypes"),
    # one prototype takes every sample: loss exactly 0, nothing learnt, no collapse to warn of (ln 1 = 0)
    ("swav", "swav.nmb_prototypes=1", "swav.nmb_prototypes"),
    ("deepcluster_v2", "deepcluster_v2.nmb_prototypes=[1,1,1]", "deepcluster_v2.nmb_prototypes"),
    ("sela_v2", "sela_v2.nmb_prototypes=[1,1,1]", "sela_v2.nmb_prototypes"),
    ("sela_v2", "sela_v2.nmb_prototypes=[3000,1]", "sela_v2.nmb_prototypes"),
    ("moco_v2", "moco_v2.queue_size=0", "moco_v2.queue_size"),
    ("moco_v2", "moco_v2.queue_size=-5", "moco_v2.queue_size"),
    ("jigsaw", "jigsaw.max_substitute=20", "jigsaw.max_substitute"),
    ("jigsaw", "jigsaw.tile_pool=-1", "jigsaw.tile_pool"),
    ("jigsaw", "jigsaw.tile_pool=0", "jigsaw.tile_pool"),
    ("swav", "swav.global_scale=[0.1]", "swav.global_scale"),
    # 1
    ("deepcluster_v2", "deepcluster_v2.nmb_prototypes=[0]", "deepcluster_v2.nmb_prototypes"),
    ("deepcluster_v2", "deepcluster_v2.nmb_prototypes=[]", "deepcluster_v2.nmb_prototypes"),
    ("deepcluster_v2", "deepcluster_v2.kmeans_iterations=-7", "deepcluster_v2.kmeans_iterations"),
    # 4
    ("swav", "swav.queue_length=10", "swav.queue_length"),
    ("swav", "swav.queue_length=-64", "swav.queue_length"),
    # 6
    ("swav", "swav.local_scale=[0,2]", "swav.local_scale"),
    ("swav", "swav.local_scale=[0.5,0.1]", "swav.local_scale"),
    ("swav", "swav.local_scale=[-1,0.1]", "swav.local_scale"),
    ("swav", "swav.global_scale=[0.5,0.1]", "swav.global_scale"),
    ("swav", "swav.epsilon=0", "swav.epsilon"),
    ("colorization", "colorization.sigma=0", "colorization.sigma"),
    ("swav", "swav.sinkhorn_iterations=0", "swav.sinkhorn_iterations"),
    ("swav", "swav.freeze_prototypes_niters=-1", "swav.freeze_prototypes_niters"),
    ("swav", "swav.epoch_queue_starts=-3", "swav.epoch_queue_starts"),
    ("swav", "swav.crops_for_assign=[0,0]", "swav.crops_for_assign"),
    ("moco_v2", "moco_v2.momentum=1.5", "moco_v2.momentum"),
    ("byol", "byol.base_momentum=2", "byol.base_momentum"),
    ("jigsaw", "jigsaw.gray_prob=1.5", "jigsaw.gray_prob"),
    ("jigsaw_pp", "jigsaw_pp.jitter_255=-5", "jigsaw_pp.jitter_255"),
    ("colorization", "colorization.lam=2", "colorization.lam"),
    ("jigclu", "jigclu.overlap=-0.5", "jigclu.overlap"),
    ("jigclu", "jigclu.overlap=1.5", "jigclu.overlap"),
    ("jigclu", "jigclu.overlap=0.5", "jigclu.overlap"),       # m=2, code mode: a patch covers the whole image
    ("jigclu", "jigclu.proj_dim=0", "jigclu.proj_dim"),
    ("jigsaw", "jigsaw.permutations=1", "jigsaw.permutations"),
    # 7
    ("sela_v2", "sela_v2.kmeans_iterations=3", "sela_v2.kmeans_iterations"),
]
RUN_ONLY = {"swav.queue_length=10"}        # needs the run's batch (32): the config check's alone


@pytest.mark.parametrize("method,override,key", BAD_SETTINGS)
def test_bad_method_settings_are_refused_by_the_config_check(method, override, key):
    with pytest.raises(SelfSupError) as err:         # when the config is resolved (omegaconf 2.4 checks a tuple's
        check_config(_cfg(method, override))         # length) or checked
    msg = str(err.value)
    assert "\n" not in msg and key in msg


@pytest.mark.parametrize("method,override,key", [s for s in BAD_SETTINGS if s[1] not in RUN_ONLY])
def test_bad_method_settings_are_refused_by_build_method(method, override, key):
    """The library path runs the same table: build_method refuses in one line naming the option and its
    value (before the backbone is built)."""
    option, _, text = override.partition("=")
    value = yaml.safe_load(text)
    with pytest.raises(SelfSupError) as err:
        build_method(method, backbone="convnet", image_size=32, **{option.partition(".")[2]: value})
    msg = str(err.value)
    assert "\n" not in msg and f"{key}={value}" in msg and "is not valid: it must be" in msg, msg


@pytest.mark.parametrize("method,options,fragment", [
    ("simclr", {"temperature": -1.0}, "simclr.temperature=-1.0 is not valid: a temperature must be positive"),
    ("moco_v2", {"temperature": 0}, "moco_v2.temperature=0 is not valid: a temperature must be positive"),
    ("jigclu", {"temperature_base": 0.0}, "jigclu.temperature_base=0.0 is not valid: a temperature must be positive"),
    ("swav", {"epsilon": 0}, "swav.epsilon=0 is not valid: it must be positive (Sinkhorn divides the scores by it)"),
    ("swav", {"epsilon": float("nan")}, "swav.epsilon=nan is not valid: it must be a finite number"),
    ("byol", {"base_momentum": float("inf")}, "byol.base_momentum=inf is not valid: it must be a finite number"),
    ("swav", {"queue_length": -64}, "swav.queue_length=-64 is not valid: it must be 0 (no queue) or more"),
    ("jigclu", {"alpha": 0, "beta": 0}, "jigclu.alpha=0 is not valid"),
])
def test_build_method_refuses_what_check_config_refuses(method, options, fragment):
    with pytest.raises(SelfSupError) as err:
        build_method(method, backbone="convnet", image_size=32, **options)
    assert "\n" not in str(err.value) and fragment in str(err.value), str(err.value)


def test_build_method_takes_good_values():
    assert build_method("swav", backbone="convnet", image_size=32, epsilon=0.03, queue_length=10).cfg.epsilon == 0.03
    build_method("simclr", backbone="convnet", image_size=32, temperature=0.2, views="patch:14x4")


def test_one_table_serves_build_method_and_check_config(monkeypatch):
    """A rule lives once: changed in the methods' table, both the library and the run's check follow."""
    from selfsup.methods.checks import METHOD_CHECKS

    monkeypatch.setitem(METHOD_CHECKS, "simclr", [("proj_dim", lambda v, c: v != 128, "anything but 128")])
    for refuse in (lambda: check_config(_cfg("simclr", "simclr.proj_dim=128")),
                   lambda: build_method("simclr", backbone="convnet", image_size=32, proj_dim=128)):
        with pytest.raises(SelfSupError, match=r"simclr.proj_dim=128 is not valid: it must be anything but 128"):
            refuse()


@pytest.mark.parametrize("overrides,key", [
    (["jigclu.alpha=0", "jigclu.beta=0"], "jigclu.alpha"),
    (["jigclu.branches=location", "jigclu.alpha=0.5"], "jigclu.alpha"),
    (["jigclu.branches=clustering", "jigclu.alpha=0"], "jigclu.alpha"),
])
def test_jigclu_weights_that_zero_or_skip_the_loss_are_refused(overrides, key):
    with pytest.raises(SelfSupError, match=key):
        check_config(_cfg("jigclu", *overrides))


def test_the_defaults_and_good_values_pass_the_method_checks():
    for method in ("simclr", "byol", "moco_v2", "swav", "deepcluster_v2", "sela_v2", "jigsaw", "jigsaw_pp",
                   "colorization", "jigclu", "vicreg", "tcr", "spectral_contrastive"):
        check_config(_cfg(method))
    check_config(_cfg("swav", "swav.queue_length=0", "swav.local_scale=[0.05,0.14]", "swav.global_scale=[0.14,1]"))
    check_config(_cfg("swav", "swav.queue_length=64"))
    check_config(_cfg("jigclu", "jigclu.overlap_mode=paper", "jigclu.overlap=0.6", "jigclu.beta=0"))
    check_config(_cfg("simclr", "simclr.views=patch:14x4"))


def test_a_swav_queue_that_never_starts_is_said(capsys):
    cfg = _cfg("swav", "swav.queue_length=64", "swav.epoch_queue_starts=5")
    check_config(cfg)
    check_config(cfg)             # as the CLI and then the Trainer do
    assert capsys.readouterr().err.count("swav.queue_length=64 is never used") == 1     # said once, not per check


def test_a_number_for_a_list_setting_says_it_is_a_list():
    with pytest.raises(SelfSupError, match=r"deepcluster_v2.nmb_prototypes is a list, e.g. "
                                           r"deepcluster_v2.nmb_prototypes=\[3000,3000,3000\]"):
        _cfg("deepcluster_v2", "deepcluster_v2.nmb_prototypes=10")


def _refused_by_trainer(tmp_path, cfg, *needles):
    with pytest.raises(SelfSupError) as err:
        Trainer(cfg)
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method,prototypes", [("deepcluster_v2", None), ("deepcluster_v2", "[200]"),
                                               ("sela_v2", "[3000]")])
def test_more_prototypes_than_images_is_refused_before_training(tmp_path, method, prototypes):
    extra = [f"{method}.nmb_prototypes={prototypes}"] if prototypes else []
    cfg = _cfg(method, *extra, tmp_path=tmp_path)
    check_config(cfg)
    _refused_by_trainer(tmp_path, cfg, f"{method}.nmb_prototypes", "128 images", f"{method}.nmb_prototypes=[")


@pytest.mark.parametrize("method", ["deepcluster_v2", "sela_v2"])
@pytest.mark.parametrize("images,fit,why", [
    (16, 16, "one per image: 10x the 4 classes, the official CIFAR advice, needs 40 images"),
    (64, 40, "about 10x the 4 classes, the official CIFAR advice"),
    (128, 40, "about 10x the 4 classes, the official CIFAR advice"),
])
def test_the_refusal_suggests_10x_the_classes_that_the_images_allow(tmp_path, method, images, fit, why):
    """With labelled data the refusal suggests about 10x the classes (40 for 4), capped by the images (one
    prototype per image), never images // 10 whatever the classes ([1,1,1] on 16 images, [6,6,6] on 64)."""
    cfg = _cfg(method, "batch_size=8", tmp_path=tmp_path, data=f"synthetic:{images}?classes=4&size=32")
    _refused_by_trainer(tmp_path, cfg, f"than the {images} images: set {method}.nmb_prototypes=[{fit},{fit},{fit}] "
                        f"({why}) or use more images")


def test_the_refusal_without_classes_suggests_a_tenth_of_the_images_and_2_at_least():
    from selfsup.methods.deepcluster_v2 import fitting_prototypes, known_classes, too_many

    class Labelled:                     # a labelled set of ``classes`` classes, as too_many reads it
        def __init__(self, classes):
            self.labels = np.arange(200) % classes

    for n, fit in [(16, "[2,2,2]"), (5, "[2,2,2]"), (64, "[6,6,6]"), (2000, "[200,200,200]")]:
        with pytest.raises(SelfSupError, match=rf"set deepcluster_v2.nmb_prototypes={re.escape(fit)} \(a tenth of "
                           r"them: the classes are unknown; the official CIFAR advice is about 10x the classes\)"):
            too_many("deepcluster_v2", [3000, 3000, 3000], n, "images")
    with pytest.raises(SelfSupError, match=r"set sela_v2.nmb_prototypes=\[8,20\] "):   # a head that fits is kept
        too_many("sela_v2", [8, 3000], 200, "images", Labelled(2))
    with pytest.raises(SelfSupError, match=r"than there are images \(1\): clustering needs 2 prototypes or more"):
        too_many("deepcluster_v2", [3000], 1, "images")
    assert [fitting_prototypes(n, c) for n, c in [(2, None), (2, 10), (19, None), (1000, 10), (30, 10)]] == [2, 2, 2, 100, 30]

    class Unlabelled:
        labels = np.full(10, -1)
    assert known_classes(Unlabelled()) is None and known_classes(object()) is None


@pytest.mark.parametrize("method", ["deepcluster_v2", "sela_v2"])
def test_following_the_refusal_trains(tmp_path, method):
    """The count the refusal suggests is accepted and learns: the loss is above 0 and more than one prototype is
    used (the [1,1,1] it used to suggest on 16 images trained at loss 0.0 with one prototype, and said nothing)."""
    data = "synthetic:16?classes=4&size=32"
    with pytest.raises(SelfSupError) as err:
        Trainer(_cfg(method, "batch_size=8", tmp_path=tmp_path, data=data))
    fit = re.search(rf"set ({method}.nmb_prototypes=\[[0-9,]+\])", str(err.value)).group(1)
    cfg = _cfg(method, fit, "batch_size=8", "log_every=1", tmp_path=tmp_path, data=data)
    check_config(cfg)
    Trainer(cfg).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    ends = [r for r in records if r.get("epoch_end")]
    assert losses and min(losses) > 0.1, records
    assert ends and all(ends[-1][f"head{h}_prototypes_used"] >= 2 for h in range(3)), ends


def test_colorization_refuses_gray_images(tmp_path):
    cfg = _cfg("colorization", tmp_path=tmp_path, data=DATA + "&channels=1")
    _refused_by_trainer(tmp_path, cfg, "colour images")


@pytest.mark.parametrize("override,key", [
    ("simclr.views=multicrop:2x24+4x16", "simclr.view_size"),     # no view of the image size
    ("simclr.views=patch:14", "simclr.crop_min_scale"),           # patches ignore the crop scale
    ("simclr.views=multicrop:2x24+4x16", "simclr.crop_min_scale"),
])
def test_view_options_that_would_be_ignored_are_refused(tmp_path, override, key):
    value = "16" if key.endswith("view_size") else "0.3"
    cfg = _cfg("simclr", override, f"{key}={value}", tmp_path=tmp_path)
    _refused_by_trainer(tmp_path, cfg, key, "simclr.views")


def test_swav_crops_for_assign_outside_the_crops_names_both_keys(tmp_path):
    cfg = _cfg("swav", "swav.crops=1x32", tmp_path=tmp_path)
    _refused_by_trainer(tmp_path, cfg, "swav.crops_for_assign", "swav.crops=1x32", "swav.crops_for_assign=[0]")

import re
from pathlib import Path

import pytest

from selfsup.config import resolve_config
from selfsup.errors import SelfSupError
from selfsup.methods import METHODS, build_method, get_method

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")) + sorted(
    (Path(__file__).resolve().parents[1] / "configs" / "speedrun").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_resolve(path):
    import yaml

    method = yaml.safe_load(path.read_text())["method"]
    cfg = resolve_config(get_method(method), str(path))
    assert cfg.method == method and cfg.epochs > 0


def test_precedence_defaults_file_flags_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\noptim:\n  lr: 0.2\nsimclr:\n  temperature: 0.3\n")
    m = get_method("simclr")
    cfg = resolve_config(m)
    assert cfg.optim.name == "lars" and cfg.simclr.temperature == 0.1        # paper recipe over base defaults
    cfg = resolve_config(m, str(f), {"epochs": 9}, ["optim.lr=0.4"])
    assert cfg.epochs == 9 and cfg.optim.lr == 0.4 and cfg.simclr.temperature == 0.3


def test_bad_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epoch: 7\n")
    with pytest.raises(SelfSupError, match="unknown config key 'epoch'"):
        resolve_config(get_method("simclr"), str(f))
    f.write_text("epochs: [1, 2\n")
    with pytest.raises(SelfSupError, match="cannot read config file"):
        resolve_config(get_method("simclr"), str(f))


def test_config_file_of_another_method_names_its_method_and_command(tmp_path, capsys):
    """A --config file written for another method (its `method:`) is refused in one line that names that
    method and the command that runs the file, not as a misspelt key; a file without `method:` still
    works under any method, and one whose `method:` matches as before."""
    from selfsup.cli import main

    with pytest.raises(SelfSupError, match=r"^config file \S*swav_cifar10.yaml is for `method: swav`, not simclr: run "
                       r"`selfsup pretrain swav --config swav_cifar10`$"):
        resolve_config(get_method("simclr"), "swav_cifar10")
    f = tmp_path / "mine.yaml"
    f.write_text("method: jigsaw_pp\njigsaw_pp:\n  hidden_dim: 64\n")
    assert main(["pretrain", "jigsaw", "--config", str(f), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key" not in err and len(err.strip().splitlines()) == 1
    assert f"is for `method: jigsaw_pp`, not jigsaw: run `selfsup pretrain jigsaw_pp --config {f}`" in err
    assert main(["pretrain", "jigsaw_pp", "--config", str(f), "--print-config"]) == 0
    assert "hidden_dim: 64" in capsys.readouterr().out
    f.write_text("epochs: 3\noptim:\n  lr: 0.2\n")           # no method: read for whichever is asked for
    for name in ("simclr", "swav"):
        cfg = resolve_config(get_method(name), str(f), {"method": name})
        assert cfg.method == name and cfg.epochs == 3 and cfg.optim.lr == 0.2


def test_build_method_library_api():
    assert "simclr" in METHODS
    m = build_method("simclr", backbone="convnet", image_size=16, temperature=0.2)
    assert m.cfg.temperature == 0.2
    with pytest.raises(SelfSupError, match="unknown option"):
        build_method("simclr", backbone="convnet", temprature=0.2)


def test_short_runs_scale_the_recipes_schedule_lengths_and_keep_what_the_user_set(capsys):
    swav = get_method("swav")
    cfg = resolve_config(swav, flags={"method": "swav", "epochs": 2}, overrides=["swav.queue_length=3840"])
    assert cfg.optim.warmup_epochs == pytest.approx(10 * 2 / 100)
    assert cfg.swav.freeze_prototypes_epochs == pytest.approx(2 / 100) and cfg.swav.epoch_queue_starts == 0
    assert "short run (2 of the recipe's 100 epochs)" in capsys.readouterr().err
    cfg = resolve_config(swav, flags={"method": "swav", "epochs": 2}, overrides=["optim.warmup_epochs=1"])
    assert cfg.optim.warmup_epochs == 1 and cfg.swav.epoch_queue_starts == 15   # given, and no queue: kept
    assert resolve_config(swav, flags={"method": "swav", "epochs": 100}).optim.warmup_epochs == 10    # the recipe's length: exact
    assert resolve_config(get_method("jigsaw"), flags={"method": "jigsaw", "epochs": 21}).optim.warmup_epochs == pytest.approx(1.0)


def test_small_images_get_the_methods_small_image_recipe_below_the_users_settings(tmp_path, capsys):
    """BYOL on 32 px images: solo-learn's CIFAR lr and weight decay over the paper's (said in one
    line); the paper's above 64 px; a setting of the user's (file, override) wins over both."""
    m = get_method("byol")
    size_of = {"small": 32, "large": 96}.__getitem__
    cfg = resolve_config(m, flags={"method": "byol", "data": "small"}, image_size_of=size_of)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.name) == (1.0, 1e-5, "lars")
    out = capsys.readouterr().err
    assert "32 px images" in out and "optim.lr 0.2 -> 1.0" in out and "optim.weight_decay 1.5e-06 -> 1e-05" in out
    cfg = resolve_config(m, flags={"method": "byol", "data": "large"}, image_size_of=size_of)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.2, 1.5e-6) and "px images" not in capsys.readouterr().err
    cfg = resolve_config(m, flags={"method": "byol", "data": "small"}, overrides=["image_size=96"], image_size_of=size_of)
    assert cfg.optim.lr == 0.2                                   # the view size decides, not the files'
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  weight_decay: 0.001\n")
    cfg = resolve_config(m, str(f), {"method": "byol", "data": "small"}, ["optim.lr=0.5"], image_size_of=size_of)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.5, 0.001)
    assert "px images" not in capsys.readouterr().err           # nothing of the small recipe was used
    assert resolve_config(get_method("simclr"), flags={"data": "small"}, image_size_of=size_of).optim.lr == 0.3


@pytest.mark.parametrize("method, expected", [
    ("jigsaw", {"optim.lr": 0.01, "optim.weight_decay": 5e-4, "optim.bias_lr_mult": 2.0}),
    ("jigsaw_pp", {"optim.lr": 0.01, "optim.weight_decay": 1e-4, "optim.bias_lr_mult": 1.0}),
    ("deepcluster_v2", {"deepcluster_v2.color_strength": 0.5, "deepcluster_v2.blur_prob": 0.0}),
    ("swav", {"swav.color_strength": 0.5, "swav.blur_prob": 0.0, "swav.nmb_prototypes": 100, "swav.epsilon": 0.03,
              "optim.lr": 0.6, "optim.min_lr": 0.0006, "optim.exclude_bias_norm": True}),
])
def test_the_small_image_recipes_pin_their_values_and_the_paper_keeps_large_images(method, expected):
    """Each small-image recipe of README "Configuration" at 32 px; at 96 px the method's own defaults."""
    from omegaconf import OmegaConf
    m = get_method(method)
    size_of = {"small": 32, "large": 96}.__getitem__
    small = resolve_config(m, flags={"method": method, "data": "small"}, image_size_of=size_of)
    large = resolve_config(m, flags={"method": method, "data": "large"}, image_size_of=size_of)
    for key, value in expected.items():
        assert OmegaConf.select(small, key) == pytest.approx(value), key
    changed = [k for k, v in expected.items() if OmegaConf.select(large, k) != v]
    assert changed, "the small-image recipe must differ from the method's defaults"


def test_swav_at_small_images_trains_on_two_global_crops():
    """``crops: global`` at 64 px or less: 2 crops of the image size, global scale (0.08, 1) as the official
    script for 2 crops alone; crops given by the user stay as given."""
    from selfsup.data.views import multicrop_views

    specs = multicrop_views(32, "global")
    assert [s.size for s in specs] == [32, 32] and specs[0].scale == (0.08, 1.0)
    size_of = {"small": 32}.__getitem__
    cfg = resolve_config(get_method("swav"), flags={"method": "swav", "data": "small"}, image_size_of=size_of)
    assert cfg.swav.crops == "global"
    cfg = resolve_config(get_method("swav"), flags={"method": "swav", "data": "small"},
                         overrides=["swav.crops=2x32+4x16"], image_size_of=size_of)
    assert cfg.swav.crops == "2x32+4x16"


def test_shipped_configs_by_name_and_packaged():
    """`--config NAME` finds a shipped config inside the package (so a wheel has them), with or without
    .yaml; an unknown name is one error listing the shipped names."""
    from selfsup.config import CONFIG_DIR, find_config, shipped_configs

    assert CONFIG_DIR.parent.name == "selfsup" and "swav_cifar10" in shipped_configs()
    assert find_config("swav_cifar10") == find_config("swav_cifar10.yaml") == CONFIG_DIR / "swav_cifar10.yaml"
    assert find_config("goyal_capacity_cifar10", "sweeps").parent.name == "sweeps"
    cfg = resolve_config(get_method("swav"), "swav_cifar10")
    assert cfg.swav.nmb_prototypes == resolve_config(get_method("swav"), str(CONFIG_DIR / "swav_cifar10.yaml")).swav.nmb_prototypes
    with pytest.raises(SelfSupError, match="neither a file nor a shipped config.*swav_cifar10"):
        find_config("no_such_config")


@pytest.mark.parametrize("name", ["swav", "jigclu", "colorization", "simclr"])
def test_print_config_is_yaml_that_reads_back(name, tmp_path):
    """--print-config: every key with a comment and its built-in default, as YAML that --config reads
    back to the same resolved settings."""
    import json

    import yaml
    from omegaconf import OmegaConf

    from selfsup.config import describe_config

    m = get_method(name)
    cfg = resolve_config(m, None, {"method": name, "epochs": 3}, ["optim.lr=0.25"])
    text = describe_config(cfg, m)
    plain = json.loads(json.dumps(OmegaConf.to_container(cfg)))
    assert yaml.safe_load(text) == plain
    leaves = [ln for ln in text.splitlines()[1:] if not ln.split("  #")[0].rstrip().endswith(":")]
    assert len(leaves) > 40 and all("  # " in ln and "[default " in ln for ln in leaves)
    assert "  lr: 0.25  # peak learning rate" in text and "[default 0.05]" in text
    f = tmp_path / "printed.yaml"
    f.write_text(text)
    again = resolve_config(m, str(f))
    assert json.loads(json.dumps(OmegaConf.to_container(again))) == plain


def test_unknown_key_points_to_print_config():
    with pytest.raises(SelfSupError, match=r"selfsup pretrain simclr --print-config"):
        resolve_config(get_method("simclr"), None, None, ["optim.lrr=1"])


def test_version_flag(capsys):
    from selfsup import __version__
    from selfsup.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"selfsup {__version__}"


@pytest.mark.parametrize("name", ["simclr", "swav", "byol", "jigsaw"])
def test_print_config_redirected_to_a_file_reads_back_exactly(name, tmp_path, capsys):
    """`pretrain M ... --print-config > file` then `--config file`: the notes on a short run and on
    small images go to stderr, so stdout is the YAML alone and reads back to the same settings."""
    from selfsup.cli import main

    data = "synthetic:64?classes=4&size=16"
    assert main(["pretrain", name, "--data", data, "--epochs", "1", "--print-config"]) == 0
    first, err = capsys.readouterr()
    assert "short run" in err and first.startswith("# selfsup pretrain")
    f = tmp_path / "printed.yaml"
    f.write_text(first)
    assert main(["pretrain", name, "--config", str(f), "--print-config"]) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
def test_a_seed_outside_numpys_range_is_refused_before_the_run(seed):
    from selfsup.config import check_config

    cfg = resolve_config(get_method("simclr"), overrides=[f"seed={seed}"])
    with pytest.raises(SelfSupError, match=rf"seed={seed} is not valid: it must be in 0 \.\. 4294967295"):
        check_config(cfg)
    check_config(resolve_config(get_method("simclr"), overrides=["seed=4294967295"]))


@pytest.mark.parametrize("override, fragment", [
    ("simclr.temperature=-1", "simclr.temperature=-1.0 is not valid: a temperature must be positive"),
    ("simclr.temperature=0", "simclr.temperature=0.0 is not valid: a temperature must be positive"),
    ("simclr.temperature=nan", "simclr.temperature=nan is not valid: it must be a finite number"),
    ("optim.lr=inf", "optim.lr=inf is not valid: it must be a finite number"),
    ("optim.weight_decay=nan", "optim.weight_decay=nan is not valid: it must be a finite number"),
    ("optim.warmup_epochs=inf", "optim.warmup_epochs=inf is not valid: it must be a finite number"),
    # beyond what a checkpoint may hold: the run would train, then its own evaluation refuse it
    ("width=32", "width=32.0 is not valid: it must be above 0 and at most 16"),
    ("image_size=5000", "image_size=5000 is not valid: it must be from 1 to 4096"),
])
def test_non_finite_numbers_and_non_positive_temperatures_are_refused(override, fragment):
    from selfsup.config import check_config

    with pytest.raises(SelfSupError, match=re.escape(fragment)):
        check_config(resolve_config(get_method("simclr"), overrides=[override]))


def test_every_methods_temperatures_must_be_positive():
    """The rule is generic: every key named *temperature* of every method (moco_v2, swav, jigclu's two, ...)."""
    from selfsup.config import check_config, flatten

    checked = 0
    for name in METHODS:
        cfg = resolve_config(get_method(name), flags={"method": name})
        check_config(cfg)                                       # the recipes pass
        for key in [k for k in flatten(cfg) if "temperature" in k]:
            with pytest.raises(SelfSupError, match=f"{key}=0.0 is not valid: a temperature must be positive"):
                check_config(resolve_config(get_method(name), flags={"method": name}, overrides=[f"{key}=0"]))
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("method", ["simclr", "spectral_contrastive", "byol", "vicreg", "deepcluster_v2", "sela_v2"])
def test_one_image_per_process_is_refused_where_batch_norm_is_per_process(method):
    """torchrun splits batch_size over the processes: 2 over 2 leaves each one image, which a per-process batch
    norm (CPU, or sync_bn=false) cannot normalise; SyncBatchNorm (CUDA) sees the images of every process."""
    from selfsup.config import check_process_batch

    cfg = resolve_config(get_method(method), flags={"method": method, "batch_size": 2})
    with pytest.raises(SelfSupError) as err:
        check_process_batch(cfg, world=2, synced_bn=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"batch_size=2 over 2 processes gives each process 1 image, too few for "
                                              f"{method}") and msg.endswith("set --batch-size 4 or more (at least 2 x 2 processes)")
    check_process_batch(cfg, world=2, synced_bn=True)          # SyncBatchNorm: the global batch of 2
    check_process_batch(cfg, world=1, synced_bn=False)         # one process of 2 images
    cfg.batch_size = 8
    check_process_batch(cfg, world=4, synced_bn=False)         # 2 per process
    with pytest.raises(SelfSupError, match="set --batch-size 16 or more"):
        check_process_batch(cfg, world=8, synced_bn=False)
    cfg.sync_bn = False
    with pytest.raises(SelfSupError, match=r"per process \(sync_bn=false\)"):
        check_process_batch(cfg, world=8, synced_bn=False)


def test_one_image_per_process_is_fine_for_methods_that_need_no_batch():
    from selfsup.config import check_process_batch

    for method in ("moco_v2", "jigsaw", "colorization"):
        check_process_batch(resolve_config(get_method(method), flags={"method": method, "batch_size": 2}), 2, False)


def test_the_small_image_note_shows_an_empty_value(capsys):
    """SwAV's crops are '' (the paper's multi-crop) until the small-image recipe sets them: the note says so."""
    resolve_config(get_method("swav"), flags={"method": "swav"}, overrides=["image_size=32"])
    assert "swav.crops '' -> global" in capsys.readouterr().err

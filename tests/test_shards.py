"""webdataset-style tar shards (selfsup.data.shards): a damaged shard or a shard list naming shards that are
not there is refused in one line, never read in part."""
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import one_line_error, run
from selfsup.data.datasets import _short_hash, cache_root, load_dataset
from selfsup.data.shards import shard_table, write_shards
from selfsup.errors import SelfSupError


def _folder(root, n=12, classes=2):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


@pytest.fixture
def shards(tmp_path):
    """tmp/out/shard-000000.tar .. shard-000002.tar, 4 images each, with classes.txt."""
    _folder(tmp_path / "src")
    write_shards(tmp_path / "src", tmp_path / "out", 4)
    return tmp_path / "out"


def _headers(path):
    """(header offset, data offset, data size) of each member of a tar."""
    with tarfile.open(path, "r:") as tar:
        return [(m.offset, m.offset_data, m.size) for m in tar]


def _cut(path, size):
    blob = path.read_bytes()
    path.write_bytes(blob[:size])
    return blob


def _cache_files():
    return sorted((cache_root() / "shards").glob("*.npz")) if (cache_root() / "shards").exists() else []


# ---------------------------------------------------------------- truncated shards

@pytest.mark.parametrize("where", ["half", "inside a member", "at a member boundary", "inside a header",
                                   "after the last member", "a damaged header"])
def test_a_truncated_shard_is_refused(shards, where):
    path = shards / "shard-000001.tar"
    heads = _headers(path)
    size = path.stat().st_size
    cut = {"half": size // 2 + 100,
           "inside a member": heads[2][1] + heads[2][2] // 2,
           "at a member boundary": heads[3][0],                     # a whole member set, no end-of-archive blocks
           "inside a header": heads[3][0] + 100,
           "after the last member": heads[-1][1] + -(-heads[-1][2] // 512) * 512,
           "a damaged header": None}[where]
    if where == "a damaged header":                                # tarfile stops there without a word
        blob = path.read_bytes()
        path.write_bytes(blob[:heads[2][0]] + b"x" * 512 + blob[heads[2][0] + 512:])
    else:
        blob = _cut(path, cut)
    for _ in range(2):                                              # refused again: not cached as good
        with pytest.raises(SelfSupError, match=r"shard .*shard-000001\.tar: truncated or corrupt .*re-create") as exc:
            load_dataset(f"shards:{shards}?workers=0")
        assert "\n" not in str(exc.value)
    path.write_bytes(blob)                                          # the whole shard again: read in full
    assert len(load_dataset(f"shards:{shards}?workers=0")) == 12


def test_a_refused_shard_leaves_no_table_in_the_cache(shards):
    path = shards / "shard-000002.tar"
    _cut(path, path.stat().st_size // 2)
    before = _cache_files()
    with pytest.raises(SelfSupError, match="truncated or corrupt"):
        shard_table(path, cache_root() / "shards")
    assert _cache_files() == before


def test_a_table_cached_by_an_older_version_for_a_truncated_shard_is_not_served(shards):
    """Before the end-of-archive check a cut shard's partial table was cached (key ``shard-v1|path|size|mtime``):
    the cache's key changed, so that table is never read again."""
    path = shards / "shard-000001.tar"
    _cut(path, path.stat().st_size // 2 + 100)
    st = path.stat()
    old = cache_root() / "shards" / f"{_short_hash(f'shard-v1|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}')}.npz"
    old.parent.mkdir(parents=True, exist_ok=True)
    np.savez(old, names=np.array([b"000000001.png"]), offsets=np.array([512], np.int64),
             sizes=np.array([10], np.int64), labels=np.array([0], np.int64))
    with pytest.raises(SelfSupError, match="truncated or corrupt"):
        load_dataset(f"shards:{shards}?workers=0")


def test_a_truncated_label_member_is_refused_as_corrupt(tmp_path):
    path = tmp_path / "s" / "a.tar"
    path.parent.mkdir()
    import io
    with tarfile.open(path, "w") as tar:
        blob = (tmp_path / "x.png")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(blob)
        tar.add(blob, arcname="k.png")
        info = tarfile.TarInfo("k.cls")
        info.size = 2000
        tar.addfile(info, io.BytesIO(b"1" + b" " * 1999))
    heads = _headers(path)
    _cut(path, heads[1][1] + 100)                                   # inside the .cls member's data
    with pytest.raises(SelfSupError, match=r"a\.tar: truncated or corrupt") as exc:
        load_dataset(f"shards:{path}?workers=0")
    assert "compressed" not in str(exc.value)


def test_a_truncated_shard_is_one_line_on_the_command_line(shards, random_ckpt, capsys):
    path = shards / "shard-000000.tar"
    _cut(path, path.stat().st_size // 2)
    code, _, err = run(capsys, "eval", "knn", "--checkpoint", random_ckpt, "--train-data", f"shards:{shards}",
                       "--test-data", f"shards:{shards}/shard-000001.tar", "--no-cache", "--device", "cpu")
    assert one_line_error(code, err, "truncated or corrupt (no end-of-archive marker)"), err


# ---------------------------------------------------------------- shard lists

def test_a_brace_list_naming_missing_shards_is_refused(shards):
    with pytest.raises(SelfSupError, match=r"shard-000003\.tar does not exist \(2 of 5 shards named by .* are "
                                           r"missing\): fix the shard list"):
        load_dataset(f"shards:{shards}/shard-{{000000..000004}}.tar")
    with pytest.raises(SelfSupError, match=r"shard .*shard-000009\.tar does not exist: fix the shard list"):
        load_dataset(f"shards:{shards}/shard-{{000000,000009}}.tar")
    with pytest.raises(SelfSupError, match=r"shard .*shard-000042\.tar does not exist: fix the shard list"):
        load_dataset(f"shards:{shards}/shard-000042.tar")
    # the list as written holds exactly the shards there are: read in full
    assert len(load_dataset(f"shards:{shards}/shard-{{000000..000002}}.tar?workers=0")) == 12
    assert len(load_dataset(f"shards:{shards}/shard-{{000000,000002}}.tar?workers=0")) == 8


def test_a_shard_named_twice_is_refused(shards):
    # read twice, its images would count twice an epoch (the list said 12 images, 16 were trained on)
    with pytest.raises(SelfSupError, match=r"shard .*shard-000001\.tar is named twice by .*: fix the shard list"):
        load_dataset(f"shards:{shards}/shard-{{000000,000001,000001}}.tar")
    with pytest.raises(SelfSupError, match=r"shard-000002\.tar is named twice by .*: fix"):
        load_dataset(f"shards:{shards}/{{shard-00000*,shard-000002}}.tar")
    (shards / "link.tar").symlink_to(shards / "shard-000000.tar")
    with pytest.raises(SelfSupError, match=r"link\.tar is named twice by .* \(as .*shard-000000\.tar\)"):
        load_dataset(f"shards:{shards}/{{shard-000000,link}}.tar")


def test_a_link_in_a_shard_folder_to_a_shard_of_it_is_refused(shards):
    # the folder's *.tar holds the shard twice: its images would count twice an epoch
    (shards / "link.tar").symlink_to(shards / "shard-000000.tar")
    with pytest.raises(SelfSupError, match=r"shard .*shard-000000\.tar is named twice by .* \(as .*link\.tar\): "
                                           r"remove it from .*, or name the shards to read"):
        load_dataset(f"shards:{shards}")
    (shards / "link.tar").unlink()
    (shards / "sub.tar").mkdir()
    with pytest.raises(SelfSupError, match=r"shard .*sub\.tar is not a file: remove it from"):
        load_dataset(f"shards:{shards}")


def test_a_glob_matching_no_shard_is_refused(shards):
    with pytest.raises(SelfSupError, match=r"no \.tar shards found at .*train-\*\.tar"):
        load_dataset(f"shards:{shards}/train-*.tar")
    # one alternative of a brace list matches nothing: refused, not read as the other alone
    with pytest.raises(SelfSupError, match=r"no shard matches .*/train-\*\.tar \(of .*/\{shard,train\}-\*\.tar\): fix the shard list"):
        load_dataset(f"shards:{shards}/{{shard,train}}-*.tar")
    assert len(load_dataset(f"shards:{shards}/{{shard-00000[01],shard-000002}}.tar?workers=0")) == 12


def test_a_folder_named_as_a_shard_is_refused(shards):
    (shards / "shard-000003.tar").mkdir()
    with pytest.raises(SelfSupError, match=r"shard-000003\.tar is not a file: fix the shard list"):
        load_dataset(f"shards:{shards}/shard-{{000000..000003}}.tar")
    with pytest.raises(SelfSupError, match=r"shard-000003\.tar is not a file: fix the shard list"):
        load_dataset(f"shards:{shards}/shard-*.tar")

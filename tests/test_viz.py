"""`selfsup viz --out`: a PNG file name or a one-line error before anything runs; --counts has a bound."""
import pytest

from conftest import TINY, one_line_error, run


def _outs(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    return [(tmp_path / "folder", "is a folder: give a PNG file name"),
            (tmp_path / "noext", "give a file name ending in .png"),
            (tmp_path / "x.txt", "give a file name ending in .png"),
            (tmp_path / "x.jpg", "give a file name ending in .png"),
            (tmp_path / "a_file" / "h.png", "cannot make its folder")]


@pytest.mark.parametrize("kind", ["heatmap", "filters"])
def test_an_out_that_is_not_a_png_file_is_refused_in_one_line(tmp_path, capsys, random_ckpt, kind):
    before = sorted(p.name for p in tmp_path.iterdir())
    for out, fragment in _outs(tmp_path):
        code, _, err = run(capsys, "viz", kind, "--checkpoint", random_ckpt, "--data", TINY, "--out", out)
        assert one_line_error(code, err, fragment), (out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["folder", "a_file"])   # nothing written


def test_an_upper_case_png_suffix_and_a_new_folder_are_fine(tmp_path, capsys, random_ckpt):
    out = tmp_path / "new" / "deeper" / "F.PNG"
    code, stdout, err = run(capsys, "viz", "filters", "--checkpoint", random_ckpt, "--out", out)
    assert code == 0, err
    assert out.read_bytes()[:4] == b"\x89PNG" and f"wrote {out}" in stdout


def test_convergence_counts_have_an_upper_bound(tmp_path, capsys, random_ckpt):
    code, _, err = run(capsys, "viz", "convergence", "--checkpoint", random_ckpt, "--data", TINY,
                       "--counts", "1,100000", "--out", tmp_path / "c.png")
    assert one_line_error(code, err, "--counts 100000 is more than 1024 patches per image"), err
    assert not (tmp_path / "c.png").exists()

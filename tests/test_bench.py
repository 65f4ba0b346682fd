import re

from conftest import run


def test_bench_table_against_the_supervised_step(capsys):
    """`selfsup bench` trains each method through the engine and tabulates it against the supervised step,
    whose ratio is 1 by construction; clustering counts shrink to fit the synthetic set, and say so."""
    code, out, _ = run(capsys, "bench", "--methods", "simclr,deepcluster_v2", "--batch-size", "8", "--steps", "1",
                       "--warmup", "1", "--image-size", "16")
    assert code == 0
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(r"^\| (\w+) \| (\d+) \| (\d+) \| ([\d.]+) \|$", out, re.M)}
    assert list(rows) == ["supervised", "simclr", "deepcluster_v2"] and rows["supervised"][2] == "1.00"
    assert all(int(r[0]) > 0 for r in rows.values())
    assert "deepcluster_v2: deepcluster_v2.nmb_prototypes=[8, 8, 8]" in out


def test_bench_refuses_zero_steps(capsys):
    code, _, err = run(capsys, "bench", "--methods", "simclr", "--steps", "0")
    assert code == 2 and "--steps 1 or more" in err

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


def test_bench_checks_every_method_name_and_the_size_before_timing(capsys):
    """It timed the supervised step before naming an unknown method, and blamed a data option for size 0."""
    code, out, err = run(capsys, "bench", "--methods", "foo", "--batch-size", "8", "--steps", "1")
    assert code == 2 and "unknown method 'foo'" in err and "bench supervised" not in out + err
    code, _, err = run(capsys, "bench", "--methods", "simclr", "--image-size", "0")
    assert code == 2 and "--image-size 0" in err


def test_bench_profile_splits_the_step(capsys):
    """`bench --profile` times the engine's own loop: the parts add up to the step, the backbone is part
    of the forward, and the rate is the batch over the step."""
    code, out, _ = run(capsys, "bench", "--profile", "--methods", "simclr", "--batch-size", "8", "--steps", "2",
                       "--warmup", "1", "--image-size", "16")
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("| method |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("supervised", "simclr"):
            rows[cells[0]] = dict(zip(cols[1:], map(float, cells[1:])))
    assert list(rows) == ["supervised", "simclr"]
    for r in rows.values():
        parts = ("data wait", "forward and loss", "backward", "optimizer", "logging and host syncs")
        assert abs(sum(r[p] for p in parts) - r["step"]) < 0.5
        assert 0 < r["backbone forward"] <= r["forward and loss"] + 0.05 and r["data + augmentation"] > 0
        assert abs(r["images/s"] - 8000 / r["step"]) <= max(1.0, 0.02 * r["images/s"])


def test_step_clock_skips_the_warmup_and_closes_the_source():
    from selfsup.engine.clock import NO_CLOCK, StepClock

    closed = []

    def source():
        try:
            yield from range(5)
        finally:
            closed.append(True)

    clock = StepClock(warmup=2)
    for i in clock.iterate("wait", source()):
        with clock("work"):
            pass
        if i == 3:
            break
    assert clock.timed_steps == 2 and set(clock.seconds) == {"wait", "work"} and closed == [True]
    assert list(NO_CLOCK.iterate("wait", [1, 2])) == [1, 2]

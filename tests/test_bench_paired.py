"""The paired-ratio benchmark (mmcal_kernels/bench/paired.py): its arithmetic,
its round order, and a quick run end to end."""

import json

import pytest

from mmcal_kernels import backends
from mmcal_kernels.bench import paired


def test_ratio_is_the_other_contenders_time_over_the_subjects_in_each_round():
    times = {"reference": [2.0, 4.0, 9.0, 8.0, 5.0], "cpu": [1.0, 2.0, 3.0, 2.0, 1.0]}
    ratios = paired.paired_ratios(times, "cpu")
    assert list(ratios) == ["reference"]  # none for the subject itself
    # per round 2, 2, 3, 4, 5: the median of the rounds' ratios, not a ratio of medians (4 / 2 = 2)
    assert ratios["reference"]["median"] == 3.0
    assert ratios["reference"]["p20"] == pytest.approx(2.0) and ratios["reference"]["p80"] == pytest.approx(4.2)
    with pytest.raises(ValueError, match="subject: 'triton'"):
        paired.paired_ratios(times, "triton")


def test_round_order_puts_every_contender_once_in_every_position():
    labels = ["reference", "reference+compile", "cpu"]
    orders = [paired.round_order(labels, r) for r in range(len(labels))]
    assert all(sorted(o) == sorted(labels) for o in orders)
    for position in range(len(labels)):
        assert sorted(o[position] for o in orders) == sorted(labels)
    assert paired.round_order(labels, 4) == orders[1]


def test_time_rounds_times_whole_blocks_and_keeps_each_round_apart():
    """A fake clock: contender a costs 2 units a call and b 1, both times a
    slowdown that grows from round to round (a shared machine's drift). Each
    round's time is its block over its calls; the ratio stays 2 in every round."""
    state = {"now": 0.0, "reads": 0, "calls": {"a": 0, "b": 0}}

    def clock():
        state["reads"] += 1
        return state["now"]

    def cost(label, units):
        def fn():
            drift = 1 + (state["reads"] - 1) // 4  # 2 contenders x 2 reads a round
            state["now"] += units * drift
            state["calls"][label] += 1

        return fn

    times = paired.time_rounds({"a": cost("a", 2.0), "b": cost("b", 1.0)}, {"a": 3, "b": 5}, rounds=4, clock=clock)
    assert state["calls"] == {"a": 12, "b": 20}
    assert times["a"] == [2.0, 4.0, 6.0, 8.0] and times["b"] == [1.0, 2.0, 3.0, 4.0]
    ratios = paired.paired_ratios(times, "b")["a"]
    assert ratios["median"] == ratios["p20"] == ratios["p80"] == 2.0


def test_unknown_subject_or_contender_is_refused():
    with pytest.raises(SystemExit, match="--contenders"):
        args = paired.parse_args(["--contenders", "reference", "nonesuch"])
        paired.chosen_contenders(args, paired.torch.device("cpu"))
    with pytest.raises(SystemExit, match="--subject"):
        args = paired.parse_args(["--contenders", "reference", "reference+compile", "--subject", "cpu"])
        paired.chosen_contenders(args, paired.torch.device("cpu"))


@pytest.mark.skipif(not any(b.name == "cpu" and b.usable for b in backends.available()), reason="no cpu backend")
def test_quick_run_writes_every_round_and_the_ratios_of_them(tmp_path, capsys):
    argv = ["--quick", "--workloads", "mosei-aligned", "--passes", "forward", "fwd+bwd", "--compile-inner", "eager",
            "--out", str(tmp_path)]  # fmt: skip
    assert paired.main(argv) == 0
    (path,) = tmp_path.glob("*-paired-quick.json")
    data = json.loads(path.read_text())
    assert data["meta"]["complete"] and data["meta"]["subject"] == "cpu" and data["meta"]["rounds"] == 3
    records = data["records"]
    assert {(r["pass"], r["backend"]) for r in records} == {
        (p, b) for p in ("forward", "fwd+bwd") for b in ("reference", "reference+compile", "cpu")
    }
    for p in ("forward", "fwd+bwd"):
        rows = {r["backend"]: r for r in records if r["pass"] == p}
        assert rows["reference+compile"]["compiled"] and rows["cpu"]["ratio_vs_subject"] is None
        for label in ("reference", "reference+compile"):
            per_round = sorted(t / s for t, s in zip(rows[label]["round_ms"], rows["cpu"]["round_ms"]))
            assert len(per_round) == 3 and all(t > 0 for t in rows[label]["round_ms"])
            assert rows[label]["ratio_vs_subject"]["median"] == pytest.approx(per_round[1])
    out = capsys.readouterr().out
    assert "mosei-aligned float32 fwd+bwd" in out and "cpu is" in out

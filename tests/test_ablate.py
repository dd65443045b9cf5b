"""train.ablate: the paired statistics by hand, the report marks, and a tiny end-to-end run."""
import json
import math
import statistics

import pytest
import torch

from train.ablate import main, paired, summarize, t_quantile, write_markdown


def test_t_quantiles_match_the_table():
    for dof, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(dof) == pytest.approx(value, abs=1e-3)


def test_paired_interval_by_hand():
    d = paired([0.80, 0.82, 0.83], [0.79, 0.80, 0.80])               # d = 1, 2, 3 points
    assert d["diffs"] == pytest.approx([0.01, 0.02, 0.03])
    assert d["mean"] == pytest.approx(0.02) and d["sd"] == pytest.approx(0.01)
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert d["ci95"] == pytest.approx([0.02 - half, 0.02 + half], abs=1e-6)
    assert not d["excludes_zero"]                                   # half = 2.48 points
    tight = paired([0.81, 0.812, 0.809, 0.811, 0.810], [0.80] * 5)
    assert tight["excludes_zero"] and tight["ci95"][0] > 0
    worse = paired([0.70, 0.71, 0.69], [0.80, 0.80, 0.81])
    assert worse["excludes_zero"] and worse["ci95"][1] < 0
    one = paired([0.8], [0.7])
    assert one["ci95"] is None and not one["excludes_zero"]


def _runs(tests, trains):
    return [{"test_acc": a, "train_acc": b, "train_acc_running": b, "seconds": 1.0}
            for a, b in zip(tests, trains)]


def test_summary_and_markdown_marks_intervals_that_exclude_zero(tmp_path):
    none = [0.80, 0.82, 0.79, 0.81, 0.80]
    runs = {"none": _runs(none, [1.0] * 5),
            "good": _runs([a + 0.02 + 0.001 * i for i, a in enumerate(none)], [0.99] * 5),
            "noisy": _runs([0.83, 0.78, 0.81, 0.80, 0.82], [1.0] * 5)}
    methods = {m: summarize(r, {} if m == "none" else {"none": none}) for m, r in runs.items()}
    good = methods["good"]
    assert good["vs"]["none"]["mean"] == pytest.approx(0.022)
    assert good["vs"]["none"]["excludes_zero"] and not methods["noisy"]["vs"]["none"]["excludes_zero"]
    assert good["gaps"] == pytest.approx([0.99 - a for a in good["accs"]])
    assert good["gap_mean"] == pytest.approx(0.99 - statistics.fmean(good["accs"]))
    report = {"settings": "--dataset digits", "seeds": [0, 1, 2, 3, 4], "methods": methods,
              "teacher_accs": {0: 0.97, 1: 0.98}, "command": "python -m train.ablate"}
    write_markdown(tmp_path / "a.md", report)
    md = (tmp_path / "a.md").read_text()
    main_table = md.split("Test accuracy per seed")[0]
    rows = {line.split("|")[1].strip(): line for line in main_table.splitlines()
            if line.startswith("| ")}
    assert "≠0" in rows["good"] and "+2.20 [" in rows["good"]
    assert "≠0" not in rows["noisy"] and "≠0" not in rows["none"]
    assert "t_0.975,4" in md and "97.00, 98.00 (mean 97.50)" in md


@pytest.mark.slow
def test_ablation_writes_json_and_markdown(tmp_path):
    det, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    try:
        assert main(["--methods", "none,kd,tser-noent", "--seeds", "0,1", "--out", str(tmp_path),
                     "--dataset", "digits", "--epochs", "1", "--teacher-epochs", "1",
                     "--timesteps", "2", "--train-samples", "128", "--quiet",
                     "--student-config", '{"channels": [4, 8], "hidden": [16]}']) == 0
    finally:  # distill switches on deterministic algorithms and seeds torch
        torch.use_deterministic_algorithms(det)
        torch.set_rng_state(rng)
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert list(report["methods"]) == ["none", "kd", "tser-noent"]
    assert report["variants"]["tser-noent"][-2:] == ["--tser-gamma", "0"]
    for m in report["methods"].values():
        assert len(m["accs"]) == 2 and all(0.0 <= a <= 1.0 for a in m["accs"])
        assert m["mean"] == pytest.approx(sum(m["accs"]) / 2)
        assert len(m["train_accs"]) == 2 and all(0.0 <= a <= 1.0 for a in m["train_accs"])
        assert m["gaps"] == pytest.approx([a - b for a, b in zip(m["train_accs"], m["accs"])])
        assert m["train_time_s"] > 0
    kd, none = report["methods"]["kd"], report["methods"]["none"]
    assert set(kd["vs"]) == {"none"} and set(none["vs"]) == {"kd"}
    assert set(report["methods"]["tser-noent"]["vs"]) == {"none", "kd"}
    assert kd["vs"]["none"]["diffs"] == pytest.approx([a - b for a, b in zip(kd["accs"],
                                                                             none["accs"])])
    lo, hi = kd["vs"]["none"]["ci95"]
    assert lo <= kd["vs"]["none"]["mean"] <= hi
    assert set(report["teacher_accs"]) == {"0", "1"} and 0 < report["teacher_mean"] <= 1
    assert (tmp_path / "runs" / "seed1" / "teacher" / "teacher.pt").is_file()
    assert report["command"].startswith("python -m train.ablate --methods none,kd")
    assert {"python", "torch", "snntorch"} <= set(report["environment"])
    md = (tmp_path / "ablation.md").read_text()
    assert "| none |" in md and "| kd |" in md and "Δ vs none" in md and "Δ vs kd" in md


def test_unknown_method_and_per_run_flags_are_refused(tmp_path, capsys):
    for argv in (["--methods", "nope"], ["--seed", "3"]):
        with pytest.raises(SystemExit):
            main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "unknown method(s) nope" in err and "--seed are set per run" in err

"""train.ablate on a tiny digits setting: one teacher per seed, every variant, the report files."""
import json

import pytest
import torch

from train.ablate import main

pytestmark = pytest.mark.slow


def test_ablation_writes_json_and_markdown(tmp_path):
    det, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    try:
        assert main(["--methods", "none,kd", "--seeds", "0,1", "--out", str(tmp_path),
                     "--dataset", "digits", "--epochs", "1", "--teacher-epochs", "1",
                     "--timesteps", "2", "--train-samples", "128", "--quiet",
                     "--student-config", '{"channels": [4, 8], "hidden": [16]}']) == 0
    finally:  # distill switches on deterministic algorithms and seeds torch
        torch.use_deterministic_algorithms(det)
        torch.set_rng_state(rng)
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert list(report["methods"]) == ["none", "kd"]
    for m in report["methods"].values():
        assert len(m["accs"]) == 2 and all(0.0 <= a <= 1.0 for a in m["accs"])
        assert m["mean"] == pytest.approx(sum(m["accs"]) / 2)
        assert m["train_time_s"] > 0
    assert set(report["teacher_accs"]) == {"0", "1"}
    assert (tmp_path / "runs" / "seed1" / "teacher" / "teacher.pt").is_file()
    assert report["command"].startswith("python -m train.ablate --methods none,kd")
    assert {"python", "torch", "snntorch"} <= set(report["environment"])
    md = (tmp_path / "ablation.md").read_text()
    assert "| none |" in md and "| kd |" in md


def test_unknown_method_and_per_run_flags_are_refused(tmp_path, capsys):
    for argv in (["--methods", "nope"], ["--seed", "3"]):
        with pytest.raises(SystemExit):
            main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "unknown method(s) nope" in err and "--seed are set per run" in err

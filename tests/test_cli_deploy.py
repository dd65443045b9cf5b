"""Issue 14 for deploy.verify and hwmodels.energy: a bad --run folder, a full disk and a bad
--device give one line and exit code 2, before any measuring, and leave no partial file."""
import errno
import os
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

import deploy.verify as verify
import hwmodels.energy as energy
from test_deploy import student_graph
from test_energy import student_run


def error_line(capsys, *needles):
    """The single stderr line 'error: ...' (argparse puts its usage lines before it)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and errors[0] == err[-1], err
    assert "Traceback" not in "\n".join(err)
    for needle in needles:
        assert str(needle) in errors[0], errors[0]


def verify_exit(argv):
    """deploy.verify.main's exit code."""
    try:
        verify.main(argv)
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture
def graph_and_inputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    nir.write(src / "g.nir", student_graph())
    np.save(src / "x.npy", (np.random.default_rng(0).random((6, 6, 1, 8, 8)) < 0.5)
            .astype(np.uint8))
    return ["--nir", str(src / "g.nir"), "--inputs", str(src / "x.npy"), "--lava-samples", "0",
            "--device", "cpu"]


def test_verify_run_that_is_a_file(graph_and_inputs, tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert verify_exit([*graph_and_inputs, "--run", str(tmp_path / "f" / "out")]) == 2
    error_line(capsys, "--run", "is a file, not a folder")


def test_verify_read_only_run_is_refused_before_any_work(graph_and_inputs, tmp_path, capsys,
                                                           monkeypatch):
    """As root a chmod'ed folder stays writable, so the check's os.access answer is patched."""
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr("common.cli.os.access", lambda p, mode: Path(p) != ro)
    monkeypatch.setattr(verify, "build_net", lambda *a: pytest.fail("worked before checking"))
    assert verify_exit([*graph_and_inputs, "--run", str(ro)]) == 2
    error_line(capsys, "--run", ro, "not writable")
    assert os.listdir(ro) == []


def full_disk_for(monkeypatch, name):
    """Path.write_text fails with ENOSPC on the temp file of `name`, as on a full disk."""
    real = Path.write_text

    def write_text(self, *a, **k):
        if self.name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_verify_full_disk_writing_the_report(graph_and_inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    full_disk_for(monkeypatch, "verify.json")
    assert verify_exit([*graph_and_inputs, "--run", str(out)]) == 2
    error_line(capsys, out / "verify.json", "no space left on device")
    assert not out.exists()  # the run made the folder; it failed, so nothing (not even it) stays


@pytest.mark.parametrize("device", ["foo", "cuda"])
def test_verify_bad_device(graph_and_inputs, tmp_path, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert verify_exit([*graph_and_inputs[:-2], "--device", device,
                        "--run", str(tmp_path / "out")]) == 2
    error_line(capsys, "--device")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["foo", "cuda"])
def test_energy_bad_device(tmp_path, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    student_run(tmp_path)
    with pytest.raises(SystemExit) as e:
        energy.main(["--run", str(tmp_path), "--device", device])
    assert e.value.code == 2
    error_line(capsys, "--device")


def test_energy_read_only_run_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    student_run(tmp_path)
    monkeypatch.setattr("common.cli.os.access", lambda p, mode: Path(p) != tmp_path)
    monkeypatch.setattr(energy, "measure", lambda *a: pytest.fail("measured before checking"))
    assert energy.main(["--run", str(tmp_path), "--samples", "4"]) == 2
    error_line(capsys, "--run", tmp_path, "not writable")
    assert not (tmp_path / "energy.json").exists()


def test_energy_full_disk_writing_the_report(tmp_path, capsys, monkeypatch):
    student_run(tmp_path)
    full_disk_for(monkeypatch, "energy.json")
    assert energy.main(["--run", str(tmp_path), "--samples", "4", "--batch-size", "4"]) == 2
    error_line(capsys, tmp_path / "energy.json", "no space left on device")
    assert not (tmp_path / "energy.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

"""The distillation CLI end to end on a tiny setting: outputs, --method none, resume, CPU
determinism, bad inputs, --help, and 2-process DistributedDataParallel (gloo)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import train.distill as distill
from train.checkpoint import load_checkpoint, load_model, save_checkpoint
from train.distill import main
from train.models import SmallCNN, SpikingCNN

REPO = Path(__file__).resolve().parents[1]
STUDENT = '{"channels": [4, 8], "hidden": [16]}'
pytestmark = pytest.mark.slow


def args(run, *extra, method="kd", epochs=1, samples=256, timesteps=2, seed=0):
    return ["--dataset", "digits", "--run", str(run), "--method", method, "--epochs", str(epochs),
            "--teacher-epochs", "1", "--timesteps", str(timesteps), "--train-samples", str(samples),
            "--student-config", STUDENT, "--seed", str(seed), "--device", "cpu", "--quiet", *extra]


@pytest.fixture(autouse=True)
def _restore_global_torch_state():
    """main() switches on deterministic algorithms and seeds torch; keep that out of other tests."""
    det, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_rng_state(rng)


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("kd")
    det = torch.are_deterministic_algorithms_enabled()
    rc = main(args(run))
    torch.use_deterministic_algorithms(det)
    return rc, run


@pytest.fixture(scope="module")
def none_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("none")
    det = torch.are_deterministic_algorithms_enabled()
    rc = main(args(run, method="none"))
    torch.use_deterministic_algorithms(det)
    return rc, run


def metrics(run):
    return json.loads((Path(run) / "train_metrics.json").read_text())


def weights(run, name="student.pt"):
    return load_checkpoint(Path(run) / name)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for n in needles:
        assert str(n) in lines[0], (n, err)
    return lines[0]


# ---- a full run --------------------------------------------------------------------------------

def test_kd_run_writes_checkpoints_metrics_and_curves(kd_run):
    rc, run = kd_run
    assert rc == 0
    for f in ("teacher.pt", "student.pt", "train_metrics.json", "curves.png"):
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = metrics(run)
    assert {"method", "dataset", "timesteps", "teacher_accuracy", "student_accuracy",
            "history"} <= m.keys()
    assert (m["method"], m["dataset"], m["timesteps"]) == ("kd", "digits", 2)
    assert m["encoding"] == {"kind": "rate", "timesteps": 2, "seed": 0}
    assert 0 <= m["teacher_accuracy"] <= 1 and 0 <= m["student_accuracy"] <= 1
    assert len(m["history"]) == 1
    row = m["history"][0]
    assert row["epoch"] == 1 and row["test_acc"] == m["student_accuracy"]
    assert {"loss", "train_acc", "test_acc", "lr"} <= row.keys()

    student, ckpt = load_model(run / "student.pt", "student")
    assert isinstance(student, SpikingCNN)
    assert student.config["channels"] == (4, 8) and student.config["hidden"] == (16,)
    assert student.config["in_shape"] == (1, 8, 8)
    assert ckpt["complete"] and ckpt["epoch"] == 0 and ckpt["method"] == "kd"
    assert ckpt["encoding"] == m["encoding"] and ckpt["history"] == m["history"]
    for m_ in student.modules():
        if hasattr(m_, "weight_step"):
            if hasattr(m_, "int_weight"):
                k = m_.quantized_weight() / m_.weight_step
                assert torch.equal(k, torch.round(k))
    teacher, tck = load_model(run / "teacher.pt", "teacher")
    assert isinstance(teacher, SmallCNN) and tck["complete"]
    assert tck["test_accuracy"] == m["teacher_accuracy"]


def test_method_none_trains_no_teacher(none_run):
    rc, run = none_run
    assert rc == 0
    assert not (run / "teacher.pt").exists()
    assert (run / "student.pt").is_file() and (run / "curves.png").is_file()
    m = metrics(run)
    assert m["method"] == "none" and m["teacher_accuracy"] is None
    assert len(m["history"]) == 1 and "ce" in m["history"][0]


# ---- determinism and resume --------------------------------------------------------------------

def test_same_seed_gives_identical_weights(none_run, tmp_path):
    _, run = none_run
    assert main(args(tmp_path / "again", method="none")) == 0
    assert_same_weights(weights(run), weights(tmp_path / "again"))
    assert without_time(metrics(run)["history"]) == without_time(
        metrics(tmp_path / "again")["history"])
    assert main(args(tmp_path / "seed1", method="none", seed=1)) == 0  # the seed matters
    a, b = weights(run), weights(tmp_path / "seed1")
    assert any(not torch.equal(a[k], b[k]) for k in a)


class Interrupted(Exception):
    pass


def test_resume_after_interruption_equals_an_uninterrupted_run(kd_run, tmp_path, monkeypatch):
    """Kill a 2-epoch run right after its epoch-1 checkpoint, resume it: bit-identical result."""
    _, kd = kd_run
    teacher = ["--teacher", str(kd / "teacher.pt")]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(args(full, *teacher, epochs=2)) == 0
    assert not (full / "teacher.pt").exists()  # --teacher is loaded, not trained
    assert metrics(full)["teacher_accuracy"] == metrics(kd)["teacher_accuracy"]

    real_save = distill.save_checkpoint

    def save_then_die(path, model, kind, **fields):
        real_save(path, model, kind, **fields)
        if kind == "student" and fields["epoch"] == 0:
            raise Interrupted

    monkeypatch.setattr(distill, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        main(args(cut, *teacher, epochs=2))
    monkeypatch.undo()
    ckpt = load_checkpoint(cut / "student.pt", "student")
    assert ckpt["epoch"] == 0 and not ckpt["complete"] and len(ckpt["history"]) == 1
    first = ckpt["history"][0]

    assert main(args(cut, *teacher, "--resume", epochs=2)) == 0
    hist = metrics(cut)["history"]
    assert [r["epoch"] for r in hist] == [1, 2]
    assert hist[0] == first  # the first epoch is kept as it was
    assert without_time(hist) == without_time(metrics(full)["history"])
    assert_same_weights(weights(cut), weights(full))
    assert load_checkpoint(cut / "student.pt")["complete"]


def test_resume_with_other_epochs_is_refused(none_run, tmp_path, capsys):
    """The one-cycle LR schedule depends on --epochs: resuming with another count is a clear error
    that leaves the checkpoint as it was."""
    run = tmp_path / "run"
    assert main(args(run, method="none", epochs=1)) == 0
    before = (run / "student.pt").read_bytes()
    capsys.readouterr()
    assert main(args(run, "--resume", method="none", epochs=2)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "student.pt" in err and "--epochs" in err
    assert (run / "student.pt").read_bytes() == before


def test_resume_of_a_complete_run_is_a_no_op(tmp_path):
    run = tmp_path / "run"
    assert main(args(run, method="none")) == 0
    before = weights(run)
    hist = metrics(run)["history"]
    assert main(args(run, "--resume", method="none")) == 0
    assert_same_weights(before, weights(run))
    assert metrics(run)["history"] == hist


# ---- bad inputs --------------------------------------------------------------------------------

def test_missing_teacher_file(tmp_path, capsys):
    missing = tmp_path / "no_teacher.pt"
    assert main(args(tmp_path / "run", "--teacher", str(missing))) == 2
    one_line_error(capsys, missing)
    assert not (tmp_path / "run").exists()  # inputs are checked before the run folder is made


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_garbage_teacher_file(tmp_path, capsys, content):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(content)
    assert main(args(tmp_path / "run", "--teacher", str(bad))) == 2
    one_line_error(capsys, bad)
    assert not (tmp_path / "run").exists()


def test_teacher_that_is_a_student_or_a_foreign_file(kd_run, tmp_path, capsys):
    _, run = kd_run
    assert main(args(tmp_path / "a", "--teacher", str(run / "student.pt"))) == 2
    one_line_error(capsys, run / "student.pt", "teacher")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert main(args(tmp_path / "b", "--teacher", str(foreign))) == 2
    one_line_error(capsys, foreign)


def test_teacher_for_another_input_shape(tmp_path, capsys):
    t = tmp_path / "mnist_teacher.pt"
    save_checkpoint(t, SmallCNN(in_shape=(1, 28, 28), channels=(2, 2, 2)), "teacher",
                    complete=True, test_accuracy=0.1)
    assert main(args(tmp_path / "run", "--teacher", str(t))) == 2
    one_line_error(capsys, t, "shape")
    assert not (tmp_path / "run").exists()


def test_missing_dataset_dir(tmp_path, capsys):
    argv = args(tmp_path / "run")
    argv[argv.index("digits")] = "cifar10"
    assert main(argv + ["--data-dir", str(tmp_path / "data")]) == 2
    one_line_error(capsys, tmp_path / "data" / "cifar-10-batches-py")
    assert not (tmp_path / "run").exists()


def test_resume_with_other_flags(none_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(none_run[1], run)
    assert main(args(run, "--resume", method="kd", epochs=2)) == 2
    one_line_error(capsys, run / "student.pt", "--method", "--resume")


def test_unknown_student_config_key(tmp_path, capsys):
    argv = args(tmp_path / "run", method="none")
    argv[argv.index(STUDENT)] = '{"chanels": [4, 8]}'
    assert main(argv) == 2
    one_line_error(capsys, "chanels", "known: channels")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", [["--dataset", "imagenet"], ["--student-config", "{nope"],
                                 ["--epochs", "two"], ["--method", "magic"], ["--epochs", "0"],
                                 ["--train-samples", "0"], ["--lr", "0"], ["--device", "foo"]])
def test_bad_flags_exit_with_usage(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(bad)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and bad[0] in err.strip().splitlines()[-1]  # the error names the flag


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--dataset", "--method", "--resume", "--teacher", "--student-config", "--student"):
        assert flag in out
    assert "(default: 64)" in out and "(default: 15)" in out  # --batch-size, --epochs


# ---- DistributedDataParallel -------------------------------------------------------------------

# Runs train.distill.main under torchrun; wraps train_teacher/train_student so that every rank also
# saves the weights it ended with (distill.py itself saves on rank 0 only).
DDP_WRAPPER = textwrap.dedent("""
    import json, os, sys
    import torch
    import train.distill as d

    def keep(fn, name):
        def wrapped(*a, **k):
            model, extra = fn(*a, **k)
            run, rank = a[-1], int(os.environ["RANK"])
            torch.save({n: v.detach().cpu() for n, v in model.state_dict().items()},
                       run / f"{name}.rank{rank}.pt")
            return model, extra
        return wrapped

    d.train_teacher = keep(d.train_teacher, "teacher")
    d.train_student = keep(d.train_student, "student")
    # the flags come in an env var: torchrun's own parser would take "--run" for its "--run-path"
    sys.exit(d.main(json.loads(os.environ["DISTILL_TEST_ARGV"])))
""")


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_main.py"
    script.write_text(DDP_WRAPPER)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
           "DISTILL_TEST_ARGV": json.dumps(args(run, epochs=1, samples=128, timesteps=2))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    for f in ("teacher.pt", "student.pt", "train_metrics.json", "curves.png"):
        assert (run / f).is_file(), f
    hist = metrics(run)["history"]
    assert len(hist) == 1 and 0 <= hist[0]["test_acc"] <= 1
    digests = metrics(run)["weight_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    r = {(name, k): torch.load(run / f"{name}.rank{k}.pt", weights_only=True)
         for name in ("teacher", "student") for k in (0, 1)}
    for name in ("student", "teacher"):
        assert_same_weights(r[name, 0], weights(run, f"{name}.pt"))  # what rank 0 saved
    assert_same_weights(r["student", 0], r["student", 1])
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = lambda sd: {k: v for k, v in sd.items() if not k.endswith(buffers)}  # noqa: E731
    assert_same_weights(params(r["teacher", 0]), params(r["teacher", 1]))
    # and the teacher's BatchNorm statistics, which every rank then uses to teach the student
    assert_same_weights(r["teacher", 0], r["teacher", 1])

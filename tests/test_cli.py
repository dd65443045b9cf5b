"""Issue 14 for train.distill, export.to_nir, export.to_onnx and checkpoints: every bad flag,
folder, disk or --resume gives one line and exit code 2 (a failed export check 1) and leaves
nothing behind; a run killed mid-checkpoint resumes with no temp file left."""
import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import common.files as files
import train.distill as distill
from common.cli import Exit, check_writable_dir, UsageError
from common.files import FileError, atomic_write, describe_os_error, remove_stale_temps
import train.checkpoint as checkpoint
from train.checkpoint import load_checkpoint
from train.data import DatasetInfo

REPO = Path(__file__).resolve().parents[1]
STUDENT = '{"channels": [4, 8], "hidden": [16]}'


def argv(run, *extra, method="none", epochs=1, samples=64):
    return ["--dataset", "digits", "--run", str(run), "--method", method, "--epochs", str(epochs),
            "--teacher-epochs", "1", "--timesteps", "2", "--train-samples", str(samples),
            "--batch-size", "32", "--student-config", STUDENT, "--device", "cpu", "--quiet", *extra]


@pytest.fixture(autouse=True)
def _restore_global_torch_state():
    det, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_rng_state(rng)


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished 1-epoch run (method none): student.pt, train_metrics.json, curves.png."""
    run = tmp_path_factory.mktemp("done") / "run"
    det = torch.are_deterministic_algorithms_enabled()
    assert distill.main(argv(run)) == 0
    torch.use_deterministic_algorithms(det)
    return run


def error_line(capsys, *needles):
    """The single stderr line 'error: ...' (argparse puts its usage lines before it)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and errors[0] == err[-1], err
    assert "Traceback" not in "\n".join(err)
    for n in needles:
        assert str(n) in errors[0], (n, errors[0])
    return errors[0]


def no_temp_files(folder):
    return not [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]


def parse_fails(args_, capsys, *needles):
    with pytest.raises(SystemExit) as e:
        distill.main(args_)
    assert e.value.code == 2
    return error_line(capsys, *needles)


# ---- train.distill: flags ----------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [
    ("--epochs", "0"), ("--epochs", "-1"), ("--teacher-epochs", "0"), ("--timesteps", "0"),
    ("--batch-size", "0"), ("--train-samples", "-5"), ("--train-samples", "0"), ("--lr", "0"),
    ("--lr", "-0.1"), ("--teacher-lr", "nan"), ("--shift", "-1"), ("--seed", "-3"),
    ("--device", "foo"), ("--student", "vgg"), ("--kd-tau", "0"), ("--tser-tau", "-1"),
    ("--esd-tau", "inf"), ("--kd-alpha", "-1"), ("--nld-lambda", "nan"), ("--samd-weight", "-0.5"),
    ("--fkd-weight", "x"), ("--tser-gamma", "-0.1"), ("--esd-beta", "-1")])
def test_bad_values_exit_2_naming_the_flag_before_any_file(tmp_path, capsys, flag, value):
    run = tmp_path / "run"
    parse_fails(argv(run) + [flag, value], capsys, flag)
    assert not run.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_gpu(tmp_path, capsys):
    parse_fails(argv(tmp_path / "run") + ["--device", "cuda"], capsys, "--device", "CUDA")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config,needles", [
    ('{"chanels": [4, 8]}', ["--student-config", "'chanels'", "known: channels"]),
    ('{"in_shape": [1, 8, 8]}', ["--student-config", "'in_shape'"]),
    ('{"channels": 4}', ["--student-config", "cannot build scnn"]),
    ('{"channels": [4, 8], "hidden": 16}', ["--student-config", "cannot build scnn"])])
def test_bad_student_config_one_line_and_no_folder(tmp_path, capsys, config, needles):
    args_ = argv(tmp_path / "run")
    args_[args_.index(STUDENT)] = config
    assert distill.main(args_) == 2
    error_line(capsys, *needles)
    assert not (tmp_path / "run").exists()


def test_student_config_that_is_not_an_object(tmp_path, capsys):
    args_ = argv(tmp_path / "run")
    args_[args_.index(STUDENT)] = "[4, 8]"
    parse_fails(args_, capsys, "--student-config", "JSON object")


def test_student_flag_picks_the_architecture(tmp_path):
    args_ = argv(tmp_path / "run", "--student", "sresnet")
    args_[args_.index(STUDENT)] = '{"widths": [4, 8]}'
    assert distill.main(args_) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "student.pt", "student")
    assert ckpt["arch"]["name"] == "sresnet" and list(ckpt["arch"]["config"]["widths"]) == [4, 8]


def test_missing_dataset_creates_no_folder(tmp_path, capsys):
    args_ = argv(tmp_path / "run", "--data-dir", str(tmp_path / "nodata"))
    args_[args_.index("digits")] = "cifar10"
    assert distill.main(args_) == 2
    error_line(capsys, tmp_path / "nodata")
    assert not (tmp_path / "run").exists()


def test_missing_teacher_file_creates_no_folder(tmp_path, capsys):
    assert distill.main(argv(tmp_path / "run", "--teacher", str(tmp_path / "t.pt"),
                             method="kd")) == 2
    error_line(capsys, tmp_path / "t.pt", "not found")
    assert not (tmp_path / "run").exists()


# ---- train.distill: folders and disks ----------------------------------------------------------

def test_run_folder_that_is_a_file_or_under_a_file(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    assert distill.main(argv(f)) == 2
    error_line(capsys, "--run", f"{f}: {f} is a file, not a folder")
    assert distill.main(argv(f / "run")) == 2  # what a read-only or odd mount looks like too
    error_line(capsys, "--run", f"{f / 'run'}: {f} is a file, not a folder")
    assert f.read_text() == "x"


def test_read_only_run_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """As root a chmod'ed folder stays writable, so the check's os.access answer is patched."""
    parent = tmp_path / "ro"
    parent.mkdir()
    monkeypatch.setattr("common.cli.os.access", lambda p, mode: Path(p) != parent)
    monkeypatch.setattr(distill, "prepare_data", lambda *a: pytest.fail("worked before checking"))
    assert distill.main(argv(parent / "run")) == 2
    error_line(capsys, "--run", parent / "run", "not writable")
    assert os.listdir(parent) == []


def test_read_only_file_system_during_a_checkpoint_write(tmp_path, capsys, monkeypatch):
    """mkstemp fails as on a file system remounted read-only mid-run: one line, no temp file."""
    real = files.tempfile.mkstemp

    def read_only(*a, dir=None, prefix="", **k):
        if prefix.startswith(".student.pt."):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*a, dir=dir, prefix=prefix, **k)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    assert distill.main(argv(tmp_path / "run")) == 2
    error_line(capsys, tmp_path / "run" / "student.pt", "read-only file system")
    assert not (tmp_path / "run").exists()  # the folder this run made is removed again


class FullDisk(io.FileIO):
    """A file on a disk with `room` bytes left: the write that crosses it is cut short, the next
    one fails with ENOSPC, as write(2) does. torch.save then raises its own RuntimeError while
    closing the zip, with the OSError in the exception chain (as on a real full tmpfs)."""
    room = 4096

    def write(self, b):
        left = self.room - self.tell()
        if len(b) > left:
            if left <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(bytes(b)[:left])
        return super().write(b)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    """The second epoch's checkpoint runs out of space: one line naming student.pt, exit 2,
    epoch 1's checkpoint kept, no temp file."""
    run, opened = tmp_path / "run", []

    def open_on_a_full_disk(path, mode="r", *a, **k):
        if Path(path).name.startswith(".student.pt."):
            opened.append(path)
            if len(opened) == 2:
                return FullDisk(path, "w")
        return open(path, mode, *a, **k)

    monkeypatch.setattr(checkpoint, "open", open_on_a_full_disk, raising=False)
    assert distill.main(argv(run, epochs=2)) == 2
    monkeypatch.undo()
    assert len(opened) == 2
    error_line(capsys, run / "student.pt", "no space left on device")
    ckpt = load_checkpoint(run / "student.pt", "student")
    assert ckpt["epoch"] == 0 and not ckpt["complete"]
    assert no_temp_files(run) and sorted(os.listdir(run)) == ["student.pt"]


def test_checkpoint_writer_turns_torchs_runtime_error_into_enospc(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "open", lambda path, mode: FullDisk(path, "w"), raising=False)
    with pytest.raises(OSError) as e:
        checkpoint._save({"x": torch.zeros(100_000)}, tmp_path / "c.pt")
    assert e.value.errno == errno.ENOSPC


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_checkpoint_writer_on_a_real_full_device():
    with pytest.raises(OSError) as e:
        checkpoint._save({"x": torch.zeros(100_000)}, "/dev/full")
    assert e.value.errno == errno.ENOSPC


# ---- train.distill: --resume -------------------------------------------------------------------

@pytest.mark.parametrize("change,flag", [
    (["--batch-size", "16"], "--batch-size"), (["--train-samples", "48"], "--train-samples"),
    (["--timesteps", "3"], "--timesteps"), (["--seed", "1"], "--seed"), (["--lr", "0.01"], "--lr"),
    (["--method", "kd"], "--method"), (["--encoding", "direct"], "--encoding"),
    (["--shift", "1"], "--shift"), (["--backprop", "rate"], "--backprop"),
    (["--epochs", "2"], "--epochs"), (["--student-config", '{"channels": [4, 4]}'], "--student")])
def test_resume_with_a_changed_setting_is_refused(done_run, tmp_path, capsys, change, flag):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(done_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    args_ = argv(run, "--resume")
    for i in range(0, len(change), 2):  # replace or append the changed flag
        if change[i] in args_:
            args_[args_.index(change[i]) + 1] = change[i + 1]
        else:
            args_ += change[i:i + 2]
    assert distill.main(args_) == 2
    error_line(capsys, run / "student.pt", flag, "--resume")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # no teacher trained either


def test_resume_with_the_same_flags_is_accepted(done_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(done_run, run)
    assert distill.main(argv(run, "--resume")) == 0


def test_teacher_settings_are_checked_too(tmp_path, capsys):
    """A finished teacher of other settings: --resume refuses naming the flag; a new run trains a
    new teacher instead of silently reusing it."""
    run = tmp_path / "run"
    assert distill.main(argv(run, method="kd")) == 0
    capsys.readouterr()
    before = (run / "teacher.pt").read_bytes()
    assert distill.main(argv(run, "--resume", "--teacher-lr", "0.01", method="kd")) == 2
    error_line(capsys, run / "teacher.pt", "--teacher-lr")
    assert (run / "teacher.pt").read_bytes() == before
    assert distill.main(argv(run, "--teacher-lr", "0.01", method="kd")) == 0
    assert "training a new teacher" in capsys.readouterr().out
    assert load_checkpoint(run / "teacher.pt")["settings"]["--teacher-lr"] == 0.01


# ---- killed mid-checkpoint, then resumed -------------------------------------------------------

# Runs train.distill with torch.save slowed down on the second student checkpoint: it writes part
# of the file, says so, and waits to be killed.
KILLED_WRITER = textwrap.dedent("""
    import json, os, sys, time
    import torch
    import train.distill as d

    real = torch.save

    def slow_save(obj, f, *a, **k):
        if obj.get("kind") == "student" and obj["epoch"] == 1:
            f.write(b"PK\\x03\\x04" + b"\\0" * 4096)
            f.flush()
            print("WRITING", flush=True)
            time.sleep(300)
        return real(obj, f, *a, **k)

    torch.save = slow_save
    sys.exit(d.main(json.loads(os.environ["DISTILL_TEST_ARGV"])))
""")


def test_sigkill_during_a_checkpoint_write_then_resume(tmp_path, capsys):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WRITER)
    cut, full = tmp_path / "cut", tmp_path / "full"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "DISTILL_TEST_ARGV": json.dumps(argv(cut, epochs=2))}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    guard = threading.Timer(240, proc.kill)  # never hang the suite
    guard.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == "WRITING":
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
    finally:
        guard.cancel()
    assert proc.returncode == -signal.SIGKILL, "".join(lines) + proc.stderr.read()[-3000:]
    stale = [p.name for p in cut.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].startswith(".student.pt.")  # what the kill left
    assert load_checkpoint(cut / "student.pt", "student")["epoch"] == 0  # previous one intact

    assert distill.main(argv(cut, "--resume", epochs=2)) == 0
    out = capsys.readouterr().out
    assert "removed 1 temp file(s)" in out and "resuming" in out
    assert no_temp_files(cut)
    assert distill.main(argv(full, epochs=2)) == 0  # the same run, never interrupted
    a, b = load_checkpoint(cut / "student.pt"), load_checkpoint(full / "student.pt")
    assert a["complete"] and a["epoch"] == 1
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_stale_temp_files_of_other_names_are_kept(tmp_path):
    (tmp_path / ".student.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".student.pt.x.tmp.keep").write_bytes(b"not ours")
    (tmp_path / "notes.tmp").write_bytes(b"user file")
    removed = remove_stale_temps(tmp_path, "student.pt")
    assert [p.name for p in removed] == [".student.pt.abc123.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".student.pt.x.tmp.keep", "notes.tmp"]
    assert remove_stale_temps(tmp_path / "missing", "student.pt") == []


# ---- common.files / common.cli -----------------------------------------------------------------

def test_atomic_write_failure_removes_the_folders_it_made(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"

    def fail(tmp):
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(FileError) as e:
        atomic_write(target, fail)
    assert str(e.value) == f"{target}: no space left on device" and e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_atomic_write_never_replaces_a_folder_or_device(tmp_path):
    with pytest.raises(FileError, match="not a regular file"):
        atomic_write(tmp_path, lambda tmp: Path(tmp).write_text("x"))
    if os.path.exists("/dev/null"):
        with pytest.raises(FileError, match="not a regular file"):
            atomic_write("/dev/null", lambda tmp: Path(tmp).write_text("x"))
        assert Path("/dev/null").is_char_device()


def test_describe_os_error_names_the_path(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    assert describe_os_error(OSError(errno.EROFS, "x"), "/r/o") == "/r/o: read-only file system"
    e = OSError(errno.ENOTDIR, "Not a directory", str(f / "x" / "y.pt"))
    assert describe_os_error(e) == f"{f / 'x' / 'y.pt'}: {f} is a file, not a directory"


def test_check_writable_dir_creates_nothing(tmp_path):
    check_writable_dir(tmp_path / "new" / "run")
    assert os.listdir(tmp_path) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="--out"):
        check_writable_dir(tmp_path / "f" / "x", "--out")


# ---- exporters ---------------------------------------------------------------------------------

def exporter(name):
    if name == "nir":
        from export.to_nir import main
        return main, "student.pt", "student.nir"
    from export.to_onnx import main
    return main, "teacher.pt", "teacher.onnx"


def export_fails(main, args_, capsys, code, *needles):
    with pytest.raises(SystemExit) as e:
        main(args_)
    assert e.value.code == code
    return error_line(capsys, *needles)


@pytest.mark.parametrize("name", ["nir", "onnx"])
def test_exporter_missing_checkpoint_exits_2(tmp_path, capsys, name):
    main, ckpt, _ = exporter(name)
    line = export_fails(main, ["--run", str(tmp_path)], capsys, 2, tmp_path / ckpt, "not found")
    assert line.startswith("error: ")


@pytest.mark.parametrize("name", ["nir", "onnx"])
def test_exporter_bad_samples_exits_2(tmp_path, capsys, name):
    main, _, _ = exporter(name)
    export_fails(main, ["--run", str(tmp_path), "--samples", "0"], capsys, 2, "--samples")


@pytest.mark.parametrize("name", ["nir", "onnx"])
def test_exporter_output_under_a_file_or_a_folder_exits_2(tmp_path, capsys, name):
    main, _, _ = exporter(name)
    f = tmp_path / "f"
    f.write_text("")
    export_fails(main, ["--run", str(tmp_path), "--out", str(f / "x.out")], capsys, 2,
                 "--out", f"{f / 'x.out'}: {f} is a file, not a folder")
    export_fails(main, ["--run", str(tmp_path), "--out", str(tmp_path)], capsys, 2,
                 "--out", "not a regular file")


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("kd") / "run"
    det = torch.are_deterministic_algorithms_enabled()
    assert distill.main(argv(run, method="kd")) == 0
    torch.use_deterministic_algorithms(det)
    return run


@pytest.mark.parametrize("name", ["nir", "onnx"])
def test_exporter_disk_full_exits_2_and_writes_nothing(kd_run, tmp_path, capsys, monkeypatch,
                                                       name):
    main, ckpt, out_name = exporter(name)
    out = tmp_path / out_name
    real = files.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    export_fails(main, ["--checkpoint", str(kd_run / ckpt), "--out", str(out), "--samples", "4"],
                 capsys, 2, out, "no space left on device")
    monkeypatch.setattr(files.os, "fsync", real)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["nir", "onnx"])
def test_exporter_works_and_removes_stale_temps(kd_run, tmp_path, capsys, name):
    main, ckpt, out_name = exporter(name)
    out = tmp_path / out_name
    (tmp_path / f".{out_name}.killed.tmp").write_bytes(b"half")
    main(["--checkpoint", str(kd_run / ckpt), "--out", str(out), "--samples", "4"])
    assert "PASS" in capsys.readouterr().out
    assert os.listdir(tmp_path) == [out_name]


def test_export_check_failure_exits_1(kd_run, tmp_path, capsys, monkeypatch):
    main, ckpt, out_name = exporter("onnx")
    monkeypatch.setattr("export.to_onnx.compare",
                        lambda path, model, batches: {"max_abs_diff": 1.0, "ok": False,
                                                      "samples": 1})
    with pytest.raises(Exit) as e:
        main(["--checkpoint", str(kd_run / ckpt), "--out", str(tmp_path / out_name),
              "--samples", "1"])
    assert e.value.code == 1 and "FAIL" in str(e.value)
    error_line(capsys, tmp_path / out_name, "not written")
    assert os.listdir(tmp_path) == []


# ---- --help ------------------------------------------------------------------------------------

def help_entries(text):
    """Each option's block of an argparse help text."""
    entries, body = [], text.split("options:", 1)[1]
    for line in body.splitlines():
        if line.startswith("  -"):
            entries.append(line)
        elif entries and line.startswith("    "):
            entries[-1] += " " + line.strip()
    return entries


@pytest.mark.parametrize("command", ["train.distill", "export.to_nir", "export.to_onnx"])
def test_help_shows_every_default(command, capsys):
    main = distill.main if command == "train.distill" else exporter(command.split("_")[-1])[0]
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    assert len(entries) > 5
    for entry in entries:
        if not entry.lstrip().startswith("-h"):
            assert "default" in entry, entry


def test_encoding_help_matches_the_code(capsys):
    with pytest.raises(SystemExit):
        distill.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "None = direct for 3-channel images (CIFAR), rate otherwise" in text
    info = lambda shape, frames=False: DatasetInfo("x", shape, 10, frames=frames)  # noqa: E731
    assert distill.encoding_kind(None, info((3, 32, 32))) == "direct"
    assert distill.encoding_kind(None, info((1, 28, 28))) == "rate"
    assert distill.encoding_kind("rate", info((3, 32, 32))) == "rate"
    assert distill.encoding_kind("direct", info((2, 48, 48), frames=True)) == "frames"

"""train.distill --from-nir (train/from_nir.py, issue 21): distil a Loihi-exact student from a
network that snnTorch trained with reset by subtraction and exported itself."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nir

import numpy as np
import pytest
import torch

from export.interpreter import run_graph
from train import distill

HAS_LAVA = importlib.util.find_spec("lava") is not None and \
    importlib.util.find_spec("lava.lib.dl.netx") is not None
STEPS, HIDDEN, BETA = 16, 64, 0.875


def snntorch_run(net, x):
    """The tool's own forward: x (N, T, F) -> output spikes (N, T, K)."""
    from snntorch import utils
    utils.reset(net)
    out = []
    for t in range(x.shape[1]):
        spk, _ = net(x[:, t])
        out.append(spk)
    return torch.stack(out, 1)


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    """sklearn's 8x8 digits as rate-coded spikes (T = 16); an snnTorch Linear/Leaky net with
    reset by subtraction trained 3 epochs on 4/5 of them; its NIR (snnTorch's export_to_nir), the
    inputs, labels and its own spike counts (N, K)."""
    import snntorch as snn
    from sklearn.datasets import load_digits
    from snntorch.export_nir import export_to_nir
    d = load_digits()
    torch.manual_seed(0)
    img = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    x = (torch.rand(len(y), STEPS, 64) < img[:, None, :]).float()

    def leaky(n, **kw):
        return snn.Leaky(beta=torch.full((n,), BETA), threshold=torch.ones(n), init_hidden=True,
                         reset_mechanism="subtract", **kw)
    net = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN, bias=False), leaky(HIDDEN),
                              torch.nn.Linear(HIDDEN, 10, bias=False), leaky(10, output=True))
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    train = torch.arange(len(y)) % 5 != 0
    for _ in range(3):
        for i in range(0, len(y), 64):
            keep = train[i:i + 64]
            loss = torch.nn.functional.cross_entropy(
                snntorch_run(net, x[i:i + 64][keep]).sum(1), y[i:i + 64][keep])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        spikes = snntorch_run(net, x)
    folder = tmp_path_factory.mktemp("tool")
    nir.write(str(folder / "g.nir"), export_to_nir(net, torch.zeros(1, 64), ignore_dims=[0]))
    np.save(folder / "x.npy", x.numpy().astype(np.uint8))
    np.save(folder / "y.npy", y.numpy())
    np.save(folder / "s.npy", spikes.sum(1).numpy())
    np.save(folder / "s_t.npy", spikes.numpy())
    return folder


def main_code(argv):
    """train.distill's exit code (argparse errors exit through SystemExit)."""
    try:
        return distill.main(argv)
    except SystemExit as e:
        return e.code


def distill_args(tool, run, *extra):
    return ["--from-nir", str(tool / "g.nir"), "--inputs", str(tool / "x.npy"),
            "--run", str(run), "--quiet", "--holdout", "0.3", *extra]


def test_distillation_beats_the_graph_as_written_and_deploys_bit_exact(tool, tmp_path):
    """Held-out agreement with the tool's predictions: distilled > the graph deployed as it is
    (NIR's float equations with reset to zero, and its Loihi-exact rebuild); then the run goes
    through export.to_nir, deploy.verify (float == emulator on every spike, Lava == emulator)
    and hwmodels.energy like our own students."""
    from export.to_nir import main as export_main
    from hwmodels import energy
    run = tmp_path / "run"
    assert distill.main(distill_args(tool, run, "--teacher-scores", str(tool / "s.npy"),
                                     "--method", "kd", "--epochs", "10", "--lr", "5e-3")) == 0
    m = json.loads((run / "train_metrics.json").read_text())
    assert m["heldout_samples"] == 539 and m["student_accuracy"] is None  # no --labels
    assert m["student_agreement"] > max(m["as_is_float_agreement"], m["as_is_loihi_agreement"])
    export_main(["--run", str(run), "--samples", "64"])
    assert (run / "student.nir").is_file()
    graph = nir.read(str(run / "student.nir"))
    assert set(graph.nodes) == {"input", "0", "1", "2", "3", "output"}
    assert graph.nodes["1"].metadata["reset"] == "zero"
    lava_samples = "2" if HAS_LAVA else "0"
    r = subprocess.run([sys.executable, "-m", "deploy.verify", "--run", str(run), "--lava-samples",
                        lava_samples, "--lava-workers", "1", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((run / "verify.json").read_text())
    fe = rep["bit_exact"]["float_vs_emulator"]
    assert rep["float"]["loihi_exact"] and fe["n"] == 539 and fe["mismatched_spikes"] == 0
    assert set(fe["per_layer"]) == {"1", "3"}
    assert rep["agreement"]["float_vs_emulator"] == 1.0
    assert rep["float"]["accuracy"] == pytest.approx(m["student_agreement"])  # labels: teacher's
    if HAS_LAVA:
        assert rep["bit_exact"]["n"] == 2 and rep["bit_exact"]["mismatched_samples"] == 0
    assert energy.main(["--run", str(run)]) == 0
    assert json.loads((run / "energy.json").read_text())["samples"] == 539


def test_student_reset_by_subtraction_starts_closer_and_deploys_bit_exact(tool, tmp_path,
                                                                         capsys):
    """--student-reset subtract-next (snnTorch's reset, export.subtract_reset): the student
    starts from the rewritten graph, which agrees with the tool on more held-out samples than
    the graph as written (same split), and its run folder passes export.to_nir and deploy.verify
    (float == emulator on every spike, Lava == emulator) with the self-connections in
    student.nir."""
    from export.to_nir import main as export_main
    runs = {}
    for reset in ("zero", "subtract-next"):
        runs[reset] = tmp_path / reset
        assert distill.main(distill_args(tool, runs[reset], "--teacher-scores",
                                         str(tool / "s.npy"), "--method", "kd", "--epochs", "1",
                                         "--lr", "1e-4", "--student-reset", reset)) == 0
    out = capsys.readouterr().out
    start = {r: json.loads((p / "train_metrics.json").read_text()) for r, p in runs.items()}
    fell = [r for r, m in start.items() if m["student_agreement"] < m["as_is_loihi_agreement"]]
    assert out.count("note: training lowered held-out agreement") == len(fell)
    if "subtract-next" in fell:
        assert "python -m export.subtract_reset" in out
    assert start["subtract-next"]["student_reset"] == "subtract-next"
    assert start["subtract-next"]["as_is_loihi_agreement"] > \
        start["zero"]["as_is_loihi_agreement"] + 0.01  # measured: 98.5 % against 97.0 %
    run = runs["subtract-next"]
    export_main(["--run", str(run), "--samples", "64"])
    graph = nir.read(str(run / "student.nir"))
    assert {"1.self", "3.self"} <= set(graph.nodes) and ("1.self", "1") in graph.edges
    r = subprocess.run([sys.executable, "-m", "deploy.verify", "--run", str(run), "--lava-samples",
                        "2" if HAS_LAVA else "0", "--lava-workers", "1", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((run / "verify.json").read_text())
    assert rep["bit_exact"]["float_vs_emulator"]["mismatched_spikes"] == 0
    if HAS_LAVA:
        assert rep["bit_exact"]["n"] == 2 and rep["bit_exact"]["mismatched_samples"] == 0
    from hwmodels import energy
    assert energy.main(["--run", str(run)]) == 0
    names = {c["name"] for c in json.loads((run / "energy.json").read_text())["connections"]}
    assert "1.self" in names  # the self-connections' SynOps are counted


def test_subtract_reset_teacher_and_resume(tool, tmp_path, capsys):
    """--teacher-reset subtract with --labels, CE only; --resume continues or names the flag."""
    run = tmp_path / "run"
    args = distill_args(tool, run, "--teacher-reset", "subtract", "--labels",
                        str(tool / "y.npy"), "--method", "none", "--epochs", "1")
    assert distill.main(args) == 0
    m = json.loads((run / "train_metrics.json").read_text())
    assert 0.8 < m["teacher_accuracy"] <= 1 and m["student_accuracy"] is not None
    assert distill.main(args + ["--resume"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert distill.main(args + ["--resume", "--lr", "1e-4"]) == 2
    assert "--lr" in capsys.readouterr().err


def test_per_step_scores_kd_sums_tser_steps_and_the_run_folder_moves(tool, tmp_path, capsys):
    """(N, T, K) scores: kd trains on their sum over T (the same run as with the (N, K) sums),
    tser on each step (another run; with (N, K) scores it says that every step gets the sum).
    heldout.npz keeps the held-out spikes and the teacher's predictions (labels too, without
    --labels); the checkpoint names it relative to the run folder, which can then be moved."""
    from train.checkpoint import load_checkpoint
    from train.data import test_batches
    from train.from_nir import split

    def first_loss(name, scores, method):
        run = tmp_path / name
        assert distill.main(distill_args(tool, run, "--teacher-scores", str(tool / scores),
                                         "--method", method, "--epochs", "1")) == 0
        return json.loads((run / "train_metrics.json").read_text())["history"][0]["loss"]
    assert first_loss("kd_t", "s_t.npy", "kd") == first_loss("kd", "s.npy", "kd")
    capsys.readouterr()
    tser_sum = first_loss("tser", "s.npy", "tser")
    assert "every step's target is that score" in capsys.readouterr().out
    assert first_loss("tser_t", "s_t.npy", "tser") != tser_sum
    x, s = np.load(tool / "x.npy"), np.load(tool / "s.npy")
    _, test = split(len(x), 0.3)
    with np.load(tmp_path / "kd_t" / "heldout.npz") as f:
        assert np.array_equal(f["inputs"], x[test])
        assert np.array_equal(f["teacher_predictions"], s[test].argmax(1))
        assert np.array_equal(f["labels"], f["teacher_predictions"]) and f["labels_are_teacher"]
    raw = torch.load(tmp_path / "kd_t" / "student.pt", weights_only=False)
    assert raw["encoding"]["file"] == "heldout.npz"
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    (tmp_path / "kd_t").rename(moved)
    ckpt = load_checkpoint(moved / "student.pt", "student")
    assert ckpt["encoding"]["file"] == str(moved.absolute() / "heldout.npz")
    n, _, batches = test_batches("npy", ckpt["encoding"], samples=None, batch_size=1000)
    assert n == len(test)
    assert np.array_equal(next(iter(batches))[0].transpose(0, 1).numpy(), x[test])
    from export.to_nir import main as export_main
    export_main(["--run", str(moved), "--samples", "4"])  # reads the moved held-out samples
    assert (moved / "student.nir").is_file()


def test_tser_per_step_targets_by_hand():
    """tser with a per-step teacher: each step of the student meets the same step of the teacher,
    both in units of T * the step's part of the score; by hand on T = 2, one sample, 2 classes."""
    from train.from_nir import teacher_output
    from train.losses import TSER
    from train.models import StudentOutput
    parts = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])        # teacher (N=1, T=2, K=2): spikes
    z = torch.tensor([[[0.5, -0.5]], [[2.0, 1.0]]])           # student T * z_t, (T=2, B=1, K=2)
    y = torch.tensor([1])
    t_out = teacher_output(parts.sum(1), parts, torch.tensor([0]))
    assert torch.equal(t_out.logits_t, torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]]))
    loss, _ = TSER(alpha=1.0, gamma=0.1, tau=4.0)(StudentOutput(logits_t=z), y, t_out)

    def softmax(v):
        e = np.exp(np.asarray(v, dtype=float) - max(v))
        return e / e.sum()
    want = 0.0
    for p_t, z_t in (([2.0, 0.0], [0.5, -0.5]), ([0.0, 2.0], [2.0, 1.0])):
        ce = -np.log(softmax(z_t)[1])
        p, q = softmax(np.array(p_t) / 4), softmax(np.array(z_t) / 4)
        kl = 16 * float((p * np.log(p / q)).sum())
        ent = -float((q * np.log(q)).sum())
        want += (ce + kl - 0.1 * ent) / 2
    assert float(loss) == pytest.approx(want, rel=1e-6)
    summed, _ = TSER(alpha=1.0, gamma=0.1, tau=4.0)(
        StudentOutput(logits_t=z), y, teacher_output(parts.sum(1), None, torch.tensor([0])))
    assert float(summed) != pytest.approx(want, rel=1e-3)  # the sum (1, 1) at both steps


def test_subtract_reset_teacher_gives_per_step_parts(tool):
    """graph_outputs: the subtract-reset model's per-step parts sum to its scores (spikes), and a
    state readout's parts are the state's changes (their sum is the final state)."""
    from train.from_nir import graph_outputs, load_graph
    _, _, _, floating = load_graph(tool / "g.nir")
    x = torch.from_numpy(np.load(tool / "x.npy").astype(np.float32))[:50]
    scores, parts = graph_outputs(floating, x, "subtract")
    assert parts.shape == (50, STEPS, 10) and torch.equal(parts.sum(1), scores)
    assert set(parts.unique().tolist()) <= {0.0, 1.0}
    from export.from_nir import NIRFloatModel
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32) * 2
    g = nir.NIRGraph(nodes={
        "input": nir.Input(np.array([3])), "fc": nir.Linear(w),
        "lif": nir.LIF(tau=np.full(4, 2e-4), r=np.full(4, 2.0), v_leak=np.zeros(4),
                       v_threshold=np.ones(4), v_reset=np.zeros(4)),
        "fc2": nir.Linear(np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)),
        "i": nir.I(r=np.full(2, 1e4)),
        "output": nir.Output(np.array([2]))},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "fc2"), ("fc2", "i"), ("i", "output")],
        metadata={"dt": 1e-4})
    floating = NIRFloatModel(g, 1e-4).eval()
    x = (torch.rand(5, 6, 3, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    scores, parts = graph_outputs(floating, x, "subtract")
    state = run_graph(g, x.transpose(0, 1), 1e-4, reset="subtract")["output"].transpose(0, 1)
    assert floating.readout == "state" and state.abs().sum() > 0
    assert torch.allclose(parts.cumsum(1), state) and torch.allclose(scores, state[:, -1])


def test_tolerant_reader_and_wrong_steps(tool, tmp_path, capsys):
    """--from-nir reads a graph as export.from_nir.read_graph does (here: an Input type with a
    leading batch dim of 1, as norse and Rockpool write it), and so does the checkpoint's copy;
    (N, T', K) scores with T' != the inputs' T: one line naming both."""
    from train.from_nir import load_graph, student_from_bytes
    g = nir.read(str(tool / "g.nir"))
    g.nodes["input"] = nir.Input(np.array([1, 64]))
    nir.write(str(tmp_path / "batched.nir"), g)
    with pytest.raises(Exception):
        nir.read(str(tmp_path / "batched.nir"))
    data, graph, student, _ = load_graph(tmp_path / "batched.nir")
    assert "batch" in capsys.readouterr().out
    assert tuple(graph.nodes["input"].output_type["output"]) == (64,)
    assert type(student_from_bytes(data)) is type(student)
    np.save(tmp_path / "s_short.npy", np.load(tool / "s_t.npy")[:, :STEPS - 1])
    code = main_code(distill_args(tool, tmp_path / "run", "--teacher-scores",
                                  str(tmp_path / "s_short.npy"), "--method", "tser"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and f"{STEPS - 1} steps" in err[-1] and f"T = {STEPS}" in err[-1], err
    assert not (tmp_path / "run").exists()


def test_nir_subtract_reset_by_hand_and_against_snntorch(tool):
    """run_graph(reset=...): "subtract" takes theta off in the step of the spike, "subtract-next"
    at the next step after its decay (snnTorch's Leaky). One LIF (beta 0.5, theta 1) on a
    constant input 0.9, by hand; then the tool's graph on its inputs: "subtract-next" gives
    snnTorch's own spike counts on every sample, "subtract" predicts as snnTorch on most."""
    node = nir.LIF(tau=np.array([2e-4]), r=np.array([2.0]), v_leak=np.zeros(1),
                   v_threshold=np.ones(1), v_reset=np.zeros(1))
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([1])), "lif": node,
                            "output": nir.Output(np.array([1]))},
                     edges=[("input", "lif"), ("lif", "output")], metadata={"dt": 1e-4})
    inputs = (0.9, 0.7)  # 0.9 tells "subtract" from the others, 0.7 "subtract-next"
    x = torch.tensor(inputs).reshape(1, 2, 1).repeat(8, 1, 1)
    expected = {}
    for reset in ("zero", "subtract", "subtract-next"):
        expected[reset] = []
        for value in inputs:
            v, out, pending = 0.0, [], 0.0
            for _ in range(8):
                v = 0.5 * v + value - pending
                out.append(float(v > 1))
                pending = 1.0 if (reset == "subtract-next" and v > 1) else 0.0
                if v > 1 and reset != "subtract-next":
                    v = v - 1 if reset == "subtract" else 0.0
            expected[reset].append(out)
    assert len({str(o) for o in expected.values()}) == 3
    for reset, spikes in expected.items():
        got = run_graph(g, x, reset=reset)["lif"].reshape(8, 2).t().tolist()
        assert got == spikes, reset
    from train.from_nir import graph_scores, load_graph
    _, _, _, floating = load_graph(tool / "g.nir")
    x = torch.from_numpy(np.load(tool / "x.npy").astype(np.float32))[:200]
    tool_counts = torch.from_numpy(np.load(tool / "s.npy"))[:200].float()
    assert torch.equal(graph_scores(floating, x, "subtract-next"), tool_counts)
    agree = (graph_scores(floating, x, "subtract").argmax(1) == tool_counts.argmax(1)).float()
    assert agree.mean() > 0.9


def test_subtract_next_is_snntorch_on_the_committed_cnn():
    """The snnTorch CNN fixture (snnTorch 1.0.0's own per-step output spikes on 200 digits):
    its graph with reset "subtract-next" gives the same spikes at every step."""
    from export.from_nir import read_graph
    folder = Path(__file__).resolve().parent / "fixtures" / "producers" / "snntorch_cnn"
    data = np.load(folder / "data.npz")
    g = read_graph(folder / "graph.nir")
    x = torch.from_numpy(data["x"][:64].astype(np.float32)).transpose(0, 1)
    out = run_graph(g, x, reset="subtract-next")[next(iter(g.outputs))]
    assert np.array_equal(out.transpose(0, 1).reshape(64, 20, -1).numpy(), data["tool_out"][:64])


@pytest.mark.parametrize("extra,needles", [
    (["--teacher-scores", "S", "--teacher-reset", "subtract"], ["exactly one"]),
    (["--method", "ckd", "--teacher-reset", "subtract"], ["--method ckd"]),
    (["--teacher-scores", "WRONG"], ["--teacher-scores", "shape"]),
    (["--teacher-reset", "subtract", "--labels", "WRONG"], ["--labels"]),
    (["--teacher-reset", "subtract", "--holdout", "1.5"], ["--holdout"])])
def test_bad_input_is_one_line_exit_2(tool, tmp_path, capsys, extra, needles):
    np.save(tmp_path / "wrong.npy", np.zeros((3, 10)))
    extra = [str(tmp_path / "wrong.npy") if e == "WRONG" else str(tool / "s.npy") if e == "S"
             else e for e in extra]
    code = main_code(distill_args(tool, tmp_path / "run", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and all(n in err[-1] for n in needles), err
    assert not (tmp_path / "run").exists()


def test_inputs_without_from_nir(tmp_path, capsys):
    assert distill.main(["--inputs", "x.npy", "--run", str(tmp_path / "run")]) == 2
    assert "--inputs needs --from-nir" in capsys.readouterr().err
    assert distill.main(["--student-reset", "subtract", "--run", str(tmp_path / "run")]) == 2
    assert "--student-reset needs --from-nir" in capsys.readouterr().err


def test_bench_from_nir_fixtures(tool, tmp_path):
    """bench.from_nir_fixtures on a small fixture made from the tool (per-step outputs, labels)
    and on random spikes with the subtract-reset teacher: the summary's rows are the exported
    graphs on the emulator (= the float student, bit-exact), the paired differences by seed."""
    import shutil
    from bench.from_nir_fixtures import main as bench_main
    from train.checkpoint import load_model
    from train.from_nir import student_scores
    fixture = tmp_path / "fixture"
    fixture.mkdir()
    shutil.copy(tool / "g.nir", fixture / "graph.nir")
    x, y, s_t = np.load(tool / "x.npy"), np.load(tool / "y.npy"), np.load(tool / "s_t.npy")
    held = slice(1700, 1760)
    tool_pred = s_t[held].sum(1).argmax(1)
    np.savez(fixture / "data.npz", x_distill=x[:300], labels_distill=y[:300],
             tool_out_distill=s_t[:300], x=x[held], labels=y[held], tool_pred=tool_pred)
    (fixture / "meta.json").write_text(json.dumps({"tool": "snntorch", "tool_accuracy": 0.5}))
    out = tmp_path / "out"
    argv = [str(out), "--fixture", str(fixture), "--methods", "kd,none", "--seeds", "0,1",
            "--epochs", "1", "--export-samples", "4"]
    assert bench_main(argv) == 0
    rep = json.loads((out / "summary.json").read_text())
    assert rep["tool"]["accuracy"] == pytest.approx((tool_pred == y[held]).mean())
    assert rep["heldout"] == 60 and rep["steps"] == STEPS
    assert rep["tool"]["predicted_classes"] == np.bincount(tool_pred, minlength=10).tolist()
    model, _ = load_model(out / "runs" / "kd_1" / "student.pt", "student")
    float_pred = student_scores(model, torch.from_numpy(x[held].astype(np.float32)),
                                "cpu").argmax(1).numpy()
    kd, none = rep["per_method"]["kd"], rep["per_method"]["none"]
    assert kd["agreement"]["per_seed"][1] == pytest.approx((float_pred == tool_pred).mean())
    assert kd["accuracy"]["per_seed"][1] == pytest.approx((float_pred == y[held]).mean())
    d = rep["paired"]["kd - none"]["agreement"]
    assert d["n"] == 2 and d["diffs"] == pytest.approx(
        np.subtract(kd["agreement"]["per_seed"], none["agreement"]["per_seed"]).tolist())
    assert "| `--method kd` |" in (out / "summary.md").read_text()
    assert bench_main(argv) == 0  # every run reused from its eval.json
    assert json.loads((out / "summary.json").read_text())["per_method"]["kd"] == kd
    # --student-reset: the rewritten file measured as the start; agreement split by the tool's
    # own margin (the fixture now has the tool's held-out spikes)
    np.savez(fixture / "data.npz", x_distill=x[:300], labels_distill=y[:300],
             tool_out_distill=s_t[:300], x=x[held], labels=y[held], tool_pred=tool_pred,
             tool_out=s_t[held])
    out = tmp_path / "sub"
    assert bench_main([str(out), "--fixture", str(fixture), "--methods", "kd", "--seeds", "0",
                       "--epochs", "1", "--export-samples", "4", "--student-reset",
                       "subtract-next"]) == 0
    rep = json.loads((out / "summary.json").read_text())
    assert rep["student_reset"] == "subtract-next" and 0 < rep["start"]["agreement"] <= 1
    assert "--student-reset" in rep["per_method"]["kd"]["runs"][0]["argv"]
    for row in (rep["as_is"], rep["start"], rep["per_method"]["kd"]):
        b = row["by_margin"]
        agreement = row["agreement"]["mean"] if isinstance(row["agreement"], dict) else \
            row["agreement"]
        assert b["margin_le_1"]["samples"] + b["margin_ge_2"]["samples"] == 60
        assert b["margin_le_1"]["samples"] * b["margin_le_1"]["agreement"] + \
            b["margin_ge_2"]["samples"] * b["margin_ge_2"]["agreement"] == \
            pytest.approx(60 * agreement)
    assert "the students' start" in (out / "summary.md").read_text()
    out = tmp_path / "random"
    assert bench_main([str(out), "--graph", str(tool / "g.nir"), "--random-spikes", "--steps",
                       "8", "--distill-samples", "100", "--heldout-samples", "30", "--methods",
                       "tser", "--seeds", "0", "--epochs", "1", "--export-samples", "4"]) == 0
    rep = json.loads((out / "summary.json").read_text())
    assert rep["tool"]["accuracy"] is None and rep["as_is"]["accuracy"] is None
    assert 0 <= rep["per_method"]["tser"]["agreement"]["mean"] <= 1
    assert np.load(out / "data" / "x_distill.npy").shape == (100, 8, 64)


def test_dt_for_a_graph_that_does_not_pin_it(tmp_path, capsys):
    """sinabs' LIF MLP (tests/fixtures/producers: r = 1, tau in steps, no dt metadata): refused
    naming --dt without it; with --dt 1 the student trains, and the checkpoint's graph pins dt,
    so export.to_nir writes a file that holds float == emulator without the flag."""
    from export.to_nir import main as export_main
    folder = Path(__file__).resolve().parent / "fixtures" / "producers" / "sinabs_lif_mlp"
    data = np.load(folder / "data.npz")
    np.save(tmp_path / "x.npy", data["x"][:60])
    args = ["--from-nir", str(folder / "graph.nir"), "--inputs", str(tmp_path / "x.npy"),
            "--teacher-reset", "subtract", "--method", "kd", "--epochs", "1", "--holdout", "0.5",
            "--quiet", "--run", str(tmp_path / "run")]
    assert distill.main(args) == 2
    assert "--dt" in capsys.readouterr().err
    assert distill.main(args + ["--dt", "1"]) == 0
    assert export_main(["--run", str(tmp_path / "run"), "--samples", "8"]) in (None, 0)
    g = nir.read(str(tmp_path / "run" / "student.nir"))
    assert float(g.metadata["dt"]) == 1.0

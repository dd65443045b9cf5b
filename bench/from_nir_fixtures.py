"""Distilling from the user's own network, measured on the Loihi emulator (issue 21; docs/kd.md).

    python -m bench.from_nir_fixtures OUT --fixture tests/fixtures/producers/snntorch_cnn \\
        [--student-reset subtract-next] [--methods kd,none,tser] [--seeds 0,1,2,3,4] \\
        [--epochs 15] [--lr 2e-3] [--holdout 0.1]
    python -m bench.from_nir_fixtures OUT --graph G.nir --random-spikes [--steps 256] \\
        [--rate 0.2] [--distill-samples 1000] [--heldout-samples 200] [...]

Inputs. --fixture DIR: a producer fixture (bench/producers): graph.nir written by the tool;
data.npz with x_distill, labels_distill and tool_out_distill (the tool's output per step,
(N, T, K), on the digits to distil on) and the held-out x, labels and tool_pred. --graph with
--random-spikes (the NIR paper's Braille RNN, whose data is not here): 0/1 spikes of the graph's
input shape with P(1) = --rate (numpy seed 0), the first --distill-samples to distil on, the next
--heldout-samples held out; the teacher is the graph's float model with reset by subtraction
(train.from_nir), its predictions are the 'tool' predictions, and there are no labels.

Measured on the held-out inputs, all on the Loihi emulator (deploy.compile.build_net, then
hwmodels.loihi.Emulator): the file as it is today (the graph compiled as written) and, per method
and seed, `train.distill --from-nir` on the distillation inputs (with --labels when there are
labels; the tool's per-step outputs or the subtract-reset model as teacher), `export.to_nir`, and
the exported graph: accuracy against the labels and agreement with the tool's predictions.
With --student-reset (the reset the tool trained with) the students start from the file
rewritten by export.subtract_reset, which is measured too ("the students' start"). Where the
tool's scores are known (a fixture's held-out tool_out, the random-spike teacher), agreement is
also split by the tool's own margin (top score minus the second: <= 1, >= 2).
Paired differences between methods with 95 % t-intervals over the seeds (train.ablate.paired).
The tool's predictions per class are reported too: random inputs can drive a network to one class
(the Braille RNN's subtract-reset model at rate 0.2: class 0 for 185 of the 200 held-out
samples; at rate 0.05 all 7 classes), and then agreement says little.
Target (issue 21): accuracy within 1 point of the tool's and >= 97 % agreement with it.
Writes OUT/summary.json and OUT/summary.md (atomic) and prints the table. A run whose
OUT/runs/<method>_<seed>/eval.json holds the same command and data digest is reused, so an
interrupted bench resumes (train.distill --resume continues a half-trained run).
"""
import argparse
import contextlib
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common.cli import positive_int
from common.files import atomic_write
from train.from_nir import fraction

TARGET_POINTS, TARGET_AGREEMENT = 0.01, 0.97


class BenchError(RuntimeError):
    """A run that failed: names the method, seed and its log."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.from_nir_fixtures",
                                description=__doc__.splitlines()[0])
    p.add_argument("out", help="output folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--fixture", metavar="DIR", help="a producer fixture folder")
    src.add_argument("--graph", metavar="G.nir", help="a graph to run on --random-spikes")
    p.add_argument("--random-spikes", action="store_true",
                   help="with --graph: seeded random input spikes, subtract-reset teacher")
    p.add_argument("--steps", type=positive_int, default=256, help="--random-spikes: T")
    p.add_argument("--rate", type=fraction, default=0.2, help="--random-spikes: P(spike)")
    p.add_argument("--distill-samples", type=positive_int, default=1000)
    p.add_argument("--heldout-samples", type=positive_int, default=200)
    p.add_argument("--methods", default="kd,none,tser")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--epochs", type=positive_int, default=15)
    p.add_argument("--lr", default="2e-3")
    p.add_argument("--batch-size", default="64")
    p.add_argument("--holdout", type=fraction, default=0.1,
                   help="train.distill --holdout (its own split of the distillation inputs)")
    p.add_argument("--export-samples", type=positive_int, default=32,
                   help="export.to_nir --samples (its float-vs-file check)")
    p.add_argument("--student-reset", choices=("zero", "subtract", "subtract-next"),
                   default="zero", help="train.distill --student-reset (the reset the tool "
                                        "trained with: export.subtract_reset)")
    p.add_argument("--device", default="cpu", help="train.distill --device and the emulator's")
    args = p.parse_args(argv)
    if args.graph and not args.random_spikes:
        p.error("--graph needs --random-spikes (a fixture brings its own inputs)")
    args.methods = [m for m in args.methods.split(",") if m]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    return args


def save_npy(path, array):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
    atomic_write(path, write)


def prepare(args, data):
    """Write the distillation inputs under `data`; returns the setting: graph, train.distill's
    input flags, held-out x (N, T, ...) float32, labels (N,) or None, the tool's predictions,
    the tool's accuracy or None, a description."""
    if args.fixture:
        fixture = Path(args.fixture)
        meta = json.loads((fixture / "meta.json").read_text())
        with np.load(fixture / "data.npz") as f:
            d = {k: f[k] for k in ("x_distill", "labels_distill", "tool_out_distill", "x",
                                   "labels", "tool_pred", "tool_out") if k in f}
        for k in ("x_distill", "labels_distill", "tool_out_distill"):
            save_npy(data / f"{k}.npy", d[k])
        flags = ["--inputs", str(data / "x_distill.npy"), "--labels",
                 str(data / "labels_distill.npy"), "--teacher-scores",
                 str(data / "tool_out_distill.npy")]
        labels, tool_pred = d["labels"], d["tool_pred"]
        return {"graph": fixture / "graph.nir", "flags": flags, "x": d["x"], "labels": labels,
                "tool_scores": d["tool_out"].sum(1) if "tool_out" in d else None,
                "classes": int(d["tool_out_distill"].shape[-1]), "tool_pred": tool_pred,
                "tool_accuracy": float((tool_pred == labels).mean()),
                "source": f"fixture {fixture.name} ({meta.get('tool')} {meta.get('version')}): "
                          f"{len(d['x_distill'])} distillation digits with the tool's per-step "
                          f"outputs, {len(labels)} held out", "meta_tool_accuracy":
                          meta.get("tool_accuracy")}
    from export.from_nir import NIRFloatModel, read_graph
    from export.interpreter import resolve_dt
    from train.from_nir import graph_scores, graph_shapes
    graph = read_graph(args.graph)
    in_shape, classes = graph_shapes(graph)
    n = args.distill_samples + args.heldout_samples
    x = (np.random.default_rng(0).random((n, args.steps, *in_shape)) < args.rate).astype(np.uint8)
    save_npy(data / "x_distill.npy", x[:args.distill_samples])
    held = x[args.distill_samples:]
    floating = NIRFloatModel(graph, resolve_dt(graph)[0]).eval()
    teacher = graph_scores(floating, torch.from_numpy(held.astype(np.float32)), "subtract")
    return {"graph": Path(args.graph), "flags": ["--inputs", str(data / "x_distill.npy"),
                                                 "--teacher-reset", "subtract"],
            "x": held, "labels": None, "classes": classes, "tool_pred": teacher.argmax(1).numpy(),
            "tool_scores": teacher.numpy(),
            "tool_accuracy": None,
            "source": f"{Path(args.graph).name} on random spikes (rate {args.rate}, T "
                      f"{args.steps}, seed 0): {args.distill_samples} to distil on, "
                      f"{args.heldout_samples} held out; teacher: its float model with reset "
                      f"by subtraction"}


def emulate(graph_path, x, device, batch_size=100):
    """Predictions (N,) of the graph compiled for Loihi, on the emulator."""
    from deploy.compile import build_net, load_graph
    from hwmodels.loihi import Emulator
    net, _ = build_net(load_graph(graph_path), None, int(x.shape[1]))
    emu = Emulator(net, device=device)
    x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    return np.concatenate([emu.run(x[i:i + batch_size]).predictions.cpu().numpy()
                           for i in range(0, len(x), batch_size)])


def rates(pred, setting):
    labels = setting["labels"]
    return {"accuracy": None if labels is None else float((pred == labels).mean()),
            "agreement": float((pred == setting["tool_pred"]).mean())}


def measured(pred, setting):
    """rates of one prediction (N,) and, where the tool's scores are known, by_margin."""
    row = rates(pred, setting)
    if setting["tool_scores"] is not None:
        row["by_margin"] = by_margin([pred], setting)
    return row


def margins(scores):
    """A teacher's own margin per sample: its top score minus its second, scores (N, K) (spike
    counts: 0 is a tie that the first class wins, 1 is one spike)."""
    top = np.sort(np.asarray(scores, dtype=np.float64), axis=1)
    return top[:, -1] - top[:, -2]


def by_margin(preds, setting):
    """Agreement with the tool on the samples where its margin is <= 1 and where it is >= 2
    (mean over `preds`, a list of (N,) predictions); where the disagreements fall."""
    m, ref = margins(setting["tool_scores"]), setting["tool_pred"]
    out = {}
    for name, mask in (("margin_le_1", m <= 1), ("margin_ge_2", m > 1)):
        agree = [float((np.asarray(p)[mask] == ref[mask]).mean()) for p in preds]
        out[name] = {"samples": int(mask.sum()),
                     "agreement": statistics.fmean(agree) if mask.any() else None}
    return out


def _exit_code(fn, argv):
    try:
        return fn(argv) or 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def data_key(setting):
    """Digest of what a run's row depends on besides its command: the graph, the files given to
    train.distill, the held-out inputs and the tool's predictions."""
    h = hashlib.sha256(Path(setting["graph"]).read_bytes())
    for flag, value in zip(setting["flags"], setting["flags"][1:]):
        if flag in ("--inputs", "--labels", "--teacher-scores"):
            h.update(Path(value).read_bytes())
    h.update(np.ascontiguousarray(setting["x"]).tobytes())
    h.update(np.ascontiguousarray(setting["tool_pred"]).tobytes())
    return h.hexdigest()[:16]


def distil(args, setting, key, method, seed, out):
    """One seed of one method: train.distill --from-nir, export.to_nir, the exported graph on the
    emulator; returns its row (reused from eval.json when the command and `key`, data_key of the
    setting, are the same)."""
    from export.to_nir import main as export_main
    from train.distill import main as distill_main
    run = out / "runs" / f"{method}_{seed}"
    argv = ["--from-nir", str(setting["graph"]), *setting["flags"], "--method", method,
            "--epochs", str(args.epochs), "--lr", args.lr, "--batch-size", args.batch_size,
            "--holdout", str(args.holdout), "--seed", str(seed), "--device", args.device,
            "--run", str(run), "--resume", "--quiet"]
    if args.student_reset != "zero":
        argv += ["--student-reset", args.student_reset]
    done = run / "eval.json"
    if done.is_file():
        row = json.loads(done.read_text())
        if row.get("argv") == argv and row.get("data") == key:
            return row
    log = out / "logs" / f"{method}_{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        code = _exit_code(distill_main, argv)
        t1 = time.time()
        if code == 0:
            code = _exit_code(export_main, ["--run", str(run), "--samples",
                                            str(args.export_samples)])
    if code != 0:
        last = (log.read_text().strip().splitlines() or [""])[-1]
        raise BenchError(f"{method} seed {seed}: exit {code} ({log}): {last}")
    metrics = json.loads((run / "train_metrics.json").read_text())
    pred = emulate(run / "student.nir", setting["x"], args.device)
    row = {"method": method, "seed": seed, **rates(pred, setting), "pred": pred.tolist(),
           "distill_split_agreement": metrics["student_agreement"],
           "train_time_s": metrics["train_time_s"], "epochs": len(metrics["history"]),
           "time_s": time.time() - t0, "export_and_emulate_s": time.time() - t1, "argv": argv,
           "data": key}
    atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(row, indent=2)))
    return row


def summarize(args, setting, as_is, rows, start=None):
    from train.ablate import paired
    counts = np.bincount(setting["tool_pred"], minlength=setting["classes"])
    report = {"source": setting["source"], "graph": str(setting["graph"]),
              "heldout": len(setting["x"]), "steps": int(setting["x"].shape[1]),
              "seeds": args.seeds, "epochs": args.epochs, "lr": args.lr,
              "holdout": args.holdout, "methods": args.methods,
              "tool": {"accuracy": setting["tool_accuracy"], "agreement": 1.0,
                       "predicted_classes": counts.tolist(),
                       "constant_agreement": float(counts.max() / counts.sum())},
              "as_is": as_is, "student_reset": args.student_reset, "start": start,
              "per_method": {}, "paired": {}, "vs_as_is": {}, "vs_start": {},
              "target": {"accuracy_within_points": 100 * TARGET_POINTS,
                         "agreement_at_least": TARGET_AGREEMENT}}
    if setting.get("meta_tool_accuracy") is not None:
        report["tool"]["meta_accuracy"] = setting["meta_tool_accuracy"]
    what = ("agreement",) if setting["labels"] is None else ("accuracy", "agreement")
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    for m in args.methods:
        r = rows[m]
        entry = {"runs": [{k: v for k, v in row.items() if k != "pred"} for row in r]}
        for w in what:
            v = [row[w] for row in r]
            entry[w] = {"per_seed": v, "mean": statistics.fmean(v), "sd": sd(v)}
        acc_ok = "accuracy" not in entry or \
            entry["accuracy"]["mean"] >= setting["tool_accuracy"] - TARGET_POINTS
        entry["target_met"] = bool(acc_ok and entry["agreement"]["mean"] >= TARGET_AGREEMENT)
        entry["train_s_per_epoch"] = statistics.fmean(
            row["train_time_s"] / max(row["epochs"], 1) for row in r)
        report["per_method"][m] = entry
        report["vs_as_is"][m] = {w: paired(entry[w]["per_seed"], [as_is[w]] * len(r))
                                 for w in what}
        if start is not None:
            report["vs_start"][m] = {w: paired(entry[w]["per_seed"], [start[w]] * len(r))
                                     for w in what}
        if setting["tool_scores"] is not None and all("pred" in row for row in r):
            entry["by_margin"] = by_margin([row["pred"] for row in r], setting)
    for row in (as_is, start):
        if row is not None:
            row["target_met"] = bool(row["agreement"] >= TARGET_AGREEMENT and (
                row["accuracy"] is None
                or row["accuracy"] >= setting["tool_accuracy"] - TARGET_POINTS))
    for a, b in (("kd", "none"), ("tser", "none"), ("tser", "kd")):
        if a in rows and b in rows:
            report["paired"][f"{a} - {b}"] = {w: paired(report["per_method"][a][w]["per_seed"],
                                                        report["per_method"][b][w]["per_seed"])
                                              for w in what}
    return report


def markdown(report):
    from train.ablate import _diff
    pct = lambda v: "–" if v is None else f"{100 * v:.2f}"  # noqa: E731

    def cell(entry, w):
        return "–" if w not in entry else \
            f"{100 * entry[w]['mean']:.2f} ± {100 * entry[w]['sd']:.2f}"
    lines = [f"{report['source']}; T = {report['steps']}, seeds {report['seeds']}, "
             f"{report['epochs']} epochs, lr {report['lr']}. The tool's predictions per class: "
             f"{report['tool']['predicted_classes']} (a constant prediction agrees on "
             f"{pct(report['tool']['constant_agreement'])} %)", "",
             f"| held out ({report['heldout']}), Loihi emulator | accuracy | agreement with "
             f"the tool | target met |", "|---|---|---|---|",
             f"| the tool | {pct(report['tool']['accuracy'])} | 100 | |",
             f"| the file as it is | {pct(report['as_is']['accuracy'])} | "
             f"{pct(report['as_is']['agreement'])} | "
             f"{'yes' if report['as_is'].get('target_met') else 'no'} |"]
    if report.get("start"):
        lines.append(f"| the file with reset {report['student_reset']} on Loihi "
                     f"(export.subtract_reset; the students' start) | "
                     f"{pct(report['start']['accuracy'])} | "
                     f"{pct(report['start']['agreement'])} | "
                     f"{'yes' if report['start']['target_met'] else 'no'} |")
    for m, e in report["per_method"].items():
        lines.append(f"| `--method {m}` | {cell(e, 'accuracy')} | {cell(e, 'agreement')} | "
                     f"{'yes' if e['target_met'] else 'no'} |")
    lines += ["", "| paired difference (points, 95 % t-interval) | accuracy | agreement |",
              "|---|---|---|"]
    diffs = [(k, v) for k, v in report["paired"].items()] + \
        [(f"{m} - as is", v) for m, v in report["vs_as_is"].items()] + \
        [(f"{m} - start", v) for m, v in report.get("vs_start", {}).items()]
    for name, d in diffs:
        lines.append(f"| {name} | {_diff(d.get('accuracy'))} | {_diff(d.get('agreement'))} |")
    split = [(label, e["by_margin"]) for label, e in
             [("the file as it is", report["as_is"]), ("the students' start", report.get("start"))]
             + [(f"`--method {m}`", e) for m, e in report["per_method"].items()]
             if e and "by_margin" in e]
    if split:
        first = split[0][1]
        lines += ["", f"Where the disagreements fall: agreement with the tool on the held-out "
                      f"samples whose top two tool scores differ by <= 1 "
                      f"({first['margin_le_1']['samples']} samples) and by >= 2 "
                      f"({first['margin_ge_2']['samples']})", "",
                  "| | margin <= 1 | margin >= 2 |", "|---|---|---|"]
        lines += [f"| {label} | {pct(b['margin_le_1']['agreement'])} | "
                  f"{pct(b['margin_ge_2']['agreement'])} |" for label, b in split]
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Exit codes: 0 done, 2 a run failed (one line naming it and its log's last line)."""
    try:
        return bench(parse_args(argv))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def bench(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    setting = prepare(args, out / "data")
    as_is = measured(emulate(setting["graph"], setting["x"], args.device), setting)
    start = None
    if args.student_reset != "zero":  # the students' start: the file with the tool's reset
        from export.subtract_reset import rewrite_file
        rewritten = out / "data" / f"graph_{args.student_reset}.nir"
        rewrite_file(setting["graph"], rewritten, args.student_reset)
        start = measured(emulate(rewritten, setting["x"], args.device), setting)
        print(f"the file with reset {args.student_reset} on Loihi: agreement "
              f"{start['agreement']:.4f}", file=sys.stderr)
    print(f"{setting['source']}\nthe file as it is, on the emulator: agreement with the tool "
          f"{as_is['agreement']:.4f}" + ("" if as_is["accuracy"] is None else
                                         f", accuracy {as_is['accuracy']:.4f} (the tool's "
                                         f"{setting['tool_accuracy']:.4f})"), file=sys.stderr)
    key = data_key(setting)  # once: it reads the graph and the input files
    rows = {m: [] for m in args.methods}
    for seed in args.seeds:
        for m in args.methods:
            rows[m].append(distil(args, setting, key, m, seed, out))
            r = rows[m][-1]
            print(f"{m} seed {seed}: agreement {r['agreement']:.4f}"
                  + ("" if r["accuracy"] is None else f" accuracy {r['accuracy']:.4f}")
                  + f" ({r['time_s']:.0f} s)", file=sys.stderr)
    report = summarize(args, setting, as_is, rows, start)
    report["time_s"] = time.time() - t0
    table = markdown(report)
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(report,
                                                                                   indent=2)))
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(table))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

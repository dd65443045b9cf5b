"""Distil a Loihi-exact student from the network the user already trained (docs/kd.md, 'Distilling
from your own network').

    python -m train.distill --from-nir G.nir --inputs X.npy [--labels y.npy] \\
        (--teacher-scores S.npy | --teacher-reset subtract|subtract-next) --run DIR [--method kd]

Student: export.from_nir.student_from_nir(G), G's weights as the start (Loihi's neuron: reset to
zero, weights and thresholds on the 8-bit grids). Teacher: scores that the user's tool wrote,
(N, K) or (N, T, K) per step, or G run by NIR's float equations with reset by subtraction
(export.interpreter.run_graph(reset=...): "subtract" in the step of the spike, sinabs' default;
"subtract-next" at the next step, undecayed, snnTorch's). Both give one
score per class and sample; a score is the spike count of a spiking readout or the final state of
a non-spiking one, and the student's score is the same sum over its T steps (logits_t.sum(0)), so
the losses compare like with like. Per-step teachers (an (N, T, K) file, or the subtract-reset
model) also give each step's part of the score; `tser` compares step with step, `kd` the sums.
Labels: --labels, else the teacher's predictions.

A seeded split (seed 0, whatever --seed) holds out --holdout of the samples; agreement with the
teacher and accuracy are measured there. RUN/heldout.npz keeps the held-out spikes and labels so
that export.to_nir, deploy.verify and hwmodels.energy read them as a dataset (encoding 'spikes',
its file named relative to the run folder: train.checkpoint.load_checkpoint resolves it).
"""
import hashlib
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset

import nir
from common.cli import UsageError, check_writable_dir, load_npy
from common.files import atomic_write, new_folder

from .data import DataError, DatasetInfo, Indexed
from .losses import METHODS, TeacherOutput, build_loss
from .models import StudentOutput

METHODS_FROM_SCORES = ("none", "kd", "tser")  # the others need the teacher's features / branches
SPLIT_SEED = 0
HELDOUT = "heldout.npz"
OUTPUTS = ("student.pt", "train_metrics.json", "curves.png", HELDOUT)


class FromNIRError(UsageError):
    """Bad input for --from-nir: the message names the flag and file."""


def add_args(p):
    g = p.add_argument_group("distil from your own network (--from-nir; docs/kd.md)")
    g.add_argument("--from-nir", metavar="G.nir", default=None,
                   help="the user's trained network as NIR: the student is its Loihi-exact rebuild "
                        "(replaces --dataset, --teacher, --student)")
    g.add_argument("--inputs", metavar="X.npy", help="--from-nir: input spikes (N, T, ...), 0/1")
    g.add_argument("--labels", metavar="y.npy", help="--from-nir: labels (N,); optional")
    g.add_argument("--teacher-scores", metavar="S.npy",
                   help="--from-nir: the tool's own scores (N, K), or (N, T, K) per step (kd: "
                        "summed over T; tser: step by step)")
    g.add_argument("--teacher-reset", choices=("subtract", "subtract-next"), default=None,
                   help="--from-nir: the teacher is G's float model with reset by subtraction: "
                        "'subtract' in the step of the spike (sinabs), 'subtract-next' at the "
                        "next step, undecayed (snnTorch's Leaky / Synaptic)")
    g.add_argument("--student-reset", choices=("zero", "subtract", "subtract-next"),
                   default="zero",
                   help="--from-nir: the student's neurons as G writes them (zero: Loihi's reset, "
                        "the file as it is), or rewritten to reset by subtraction on Loihi "
                        "(export.subtract_reset; LIF / IF neurons; name the reset your tool "
                        "trained with)")
    g.add_argument("--dt", type=float, default=None,
                   help="--from-nir: the graph's time step, for a file that does not pin it "
                        "(deploy.verify's --dt; docs/producers.md); written into the student's "
                        "graph")
    g.add_argument("--holdout", type=fraction, default=0.2, metavar="F",
                   help="--from-nir: fraction of the samples held out (split seed 0)")


def fraction(text):
    """A number in (0, 1) (--holdout; bench.from_nir_fixtures' --rate and --holdout)."""
    import argparse
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return v


def check_args(args):
    """UsageError for flags that cannot work together (before any file is read)."""
    own = ("inputs", "labels", "teacher_scores", "teacher_reset", "dt")
    if args.from_nir is None:
        given = [n for n in own if getattr(args, n) is not None]
        if args.student_reset != "zero":
            given.append("student_reset")
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --from-nir")
        return
    if args.inputs is None:
        raise UsageError("--from-nir needs --inputs X.npy (input spikes (N, T, ...))")
    if (args.teacher_scores is None) == (args.teacher_reset is None):
        raise UsageError("--from-nir needs exactly one of --teacher-scores S.npy and "
                         "--teacher-reset subtract")
    if args.method not in METHODS_FROM_SCORES:
        raise UsageError(f"--method {args.method}: needs a teacher network's features or "
                         f"branches; with --from-nir use {', '.join(METHODS_FROM_SCORES)}")
    if args.backprop != "bptt":
        raise UsageError("--backprop rate: not with --from-nir (the student is any NIR graph)")


# ---- the graph ---------------------------------------------------------------------------------

def read_graph_bytes(data: bytes) -> nir.NIRGraph:
    """The graph of a checkpoint's NIR bytes, read as --from-nir reads it (with
    export.from_nir.read_graph's repairs, reported at training: not repeated here)."""
    from export.from_nir import read_graph
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "g.nir"
        path.write_bytes(data)
        return read_graph(path)


def student_from_bytes(data: bytes):
    """The student of a checkpoint with arch 'nir' (its rounding was reported at training)."""
    from export.from_nir import student_from_nir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return student_from_nir(read_graph_bytes(data))


def _read(path, flag) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise FromNIRError(f"{flag} {path}: cannot read ({e.strerror or type(e).__name__})") \
            from None


def load_graph(path, dt=None, student_reset="zero"):
    """(bytes, graph, student, float model with reset to zero) of --from-nir; with `dt` (--dt)
    the graph's metadata gets that dt, and the bytes are of that graph (the checkpoint's copy then
    pins it). With `student_reset` "subtract" / "subtract-next" (--student-reset) the student
    is built from export.subtract_reset of the graph, and the bytes are of that rewritten graph;
    `graph` and the float model stay the user's."""
    from export.from_nir import NIRFloatModel, read_graph, student_from_nir
    from export.interpreter import NIRError, resolve_dt
    from export.subtract_reset import subtract_reset
    data = _read(path, "--from-nir")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                graph = read_graph(path)  # the tolerant reader of export.from_nir / deploy
            except NIRError as e:
                raise FromNIRError(f"--from-nir {str(e).splitlines()[0]}") from None
            if dt is not None:
                graph.metadata = {**(graph.metadata or {}), "dt": resolve_dt(graph, dt)[0]}
            source = graph if student_reset == "zero" else subtract_reset(graph, student_reset)
            if source is not graph or dt is not None:  # the bytes of the student's graph
                data = _graph_bytes(source)
            student = student_from_nir(source)
        for w in caught:  # read_graph's repairs name the file already
            text = str(w.message)
            print(f"--from-nir {text if text.startswith(str(path)) else f'{path}: {text}'}")
        floating = NIRFloatModel(graph, resolve_dt(graph)[0]).eval()
    except NIRError as e:
        raise FromNIRError(f"--from-nir {path}: {str(e).splitlines()[0]}") from None
    return data, graph, student, floating


def _graph_bytes(graph) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.nir"
        nir.write(str(path), graph)
        return path.read_bytes()


def graph_shapes(graph):
    """(input shape, number of classes) of the graph's Input and Output nodes."""
    def shape(node):
        return tuple(int(s) for s in np.asarray(node.output_type["output"]).reshape(-1))
    return (shape(next(iter(graph.inputs.values()))),
            int(np.prod(shape(next(iter(graph.outputs.values()))))))


# ---- data --------------------------------------------------------------------------------------

def load_data(args, in_shape, k):
    """(x (N, T, ...) float32 0/1, labels (N,) int64 or None, scores (N, K) float32 or None,
    per-step scores (N, T, K) float32 or None): an (N, T, K) file's steps are the parts of the
    score (output spikes per step for a spiking readout), and its sum over T is the score."""
    x = load_npy(args.inputs, "--inputs", FromNIRError)
    if x.ndim < 3 or tuple(x.shape[2:]) != in_shape:
        raise FromNIRError(f"--inputs {args.inputs}: shape {x.shape}, the graph takes "
                           f"(N, T, {', '.join(map(str, in_shape))})")
    if not np.isin(x, (0, 1)).all():
        raise FromNIRError(f"--inputs {args.inputs}: spikes must be 0/1 (Loihi's input)")
    n = len(x)
    y = scores = None
    if args.labels:
        y = load_npy(args.labels, "--labels", FromNIRError)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 \
                or y.max() >= k:
            raise FromNIRError(f"--labels {args.labels}: need {n} integer labels in [0, {k}), got "
                               f"shape {y.shape} {y.dtype}")
        y = torch.from_numpy(y.astype(np.int64))
    if args.teacher_scores:
        s = load_npy(args.teacher_scores, "--teacher-scores", FromNIRError)
        if s.ndim not in (2, 3) or s.shape[0] != n or s.shape[-1] != k:
            raise FromNIRError(f"--teacher-scores {args.teacher_scores}: shape {s.shape}, need "
                               f"({n}, {k}) or ({n}, {x.shape[1]}, {k})")
        if s.ndim == 3 and s.shape[1] != x.shape[1]:
            raise FromNIRError(f"--teacher-scores {args.teacher_scores}: {s.shape[1]} steps, "
                               f"--inputs {args.inputs} has T = {x.shape[1]}")
        if not np.isfinite(s).all():
            raise FromNIRError(f"--teacher-scores {args.teacher_scores}: not all finite")
        s = torch.from_numpy(s.astype(np.float32))
        scores, steps = (s.sum(1), s) if s.ndim == 3 else (s, None)
        return torch.from_numpy(x.astype(np.float32)), y, scores, steps
    return torch.from_numpy(x.astype(np.float32)), y, None, None


def split(n, fraction):
    """(train indices, held-out indices), seeded by SPLIT_SEED alone."""
    n_test = int(round(n * fraction))
    if n_test < 1 or n_test >= n:
        raise FromNIRError(f"--holdout {fraction}: {n} samples leave {n_test} held out; need at "
                           f"least 1 for each side")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@torch.no_grad()
def graph_outputs(floating, x, reset, batch_size=256):
    """(scores (N, K), per-step parts (N, T, K)) of G's float model (NIR equations) on x
    (N, T, ...) with a reset of export.interpreter.RESETS. Score: the spike count of a spiking readout, the
    final state of a non-spiking one; parts: the spikes of each step, or the state's change
    v[t] - v[t-1] (the student's logits_t are the same parts)."""
    from export.interpreter import run_graph
    scores, parts = [], []
    for i in range(0, len(x), batch_size):
        values = run_graph(floating.graph, x[i:i + batch_size].transpose(0, 1), floating.dt,
                           reset=reset)
        y = values[floating.output_name].flatten(2)  # (T, B, K)
        if floating.readout == "spikes":
            scores.append(y.sum(0))
            parts.append(y.transpose(0, 1))
        else:
            scores.append(y[-1])
            parts.append(torch.diff(y, dim=0, prepend=torch.zeros_like(y[:1])).transpose(0, 1))
    return torch.cat(scores), torch.cat(parts)


def graph_scores(floating, x, reset, batch_size=256):
    """Scores (N, K) of graph_outputs."""
    return graph_outputs(floating, x, reset, batch_size)[0]


@torch.no_grad()
def student_scores(student, x, device, batch_size=256):
    student.eval()
    return torch.cat([student(x[i:i + batch_size].to(device).transpose(0, 1)).logits_t.sum(0)
                      .cpu() for i in range(0, len(x), batch_size)])


def teacher_output(scores, scores_t, idx):
    """The teacher of samples idx for the losses, in the units of the student's T * z_t (whose
    mean over T is the score): logits = the scores (N, K)[idx]; logits_t = T * the per-step parts
    (N, T, K)[idx] as (T, B, K), or None (tser then takes the score at every step)."""
    if scores_t is None:
        return TeacherOutput(scores[idx], [], None)
    return TeacherOutput(scores[idx], [], None, scores_t[idx].transpose(0, 1) * scores_t.shape[1])


def write_heldout(path, x, y, teacher_pred, labelled):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, inputs=x.numpy().astype(np.uint8), labels=y.numpy(),
                     teacher_predictions=teacher_pred.numpy(), labels_are_teacher=not labelled)
    atomic_write(path, write)


def heldout_batches(encoding, samples=None, batch_size=64):
    """train.data.test_batches for encoding {'kind': 'spikes', 'file': RUN/heldout.npz} (as
    train.checkpoint.load_checkpoint resolves the stored name heldout.npz):
    (n, info, batches of ((T, B, ...) spikes, labels))."""
    path = Path(encoding["file"])
    try:
        with np.load(path) as f:
            x, y = torch.from_numpy(f["inputs"].astype(np.float32)), torch.from_numpy(f["labels"])
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: cannot read the held-out samples of a --from-nir run "
                        f"({type(e).__name__})") from None
    n = len(x) if samples is None else min(samples, len(x))
    info = DatasetInfo("npy", tuple(x.shape[2:]), int(encoding["num_classes"]), frames=True)
    batches = ((x[i:min(i + batch_size, n)].transpose(0, 1), y[i:min(i + batch_size, n)])
               for i in range(0, n, batch_size))
    return n, info, batches


# ---- run ---------------------------------------------------------------------------------------

def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def settings_of(args, graph_bytes, x_digest) -> dict:
    import argparse
    settings = {"--from-nir": graph_bytes, "--inputs": x_digest,
                "--labels": args.labels and _digest(_read(args.labels, "--labels")),
                "--teacher-scores": args.teacher_scores and _digest(
                    _read(args.teacher_scores, "--teacher-scores")),
                "--teacher-reset": args.teacher_reset, "--holdout": args.holdout,
                "--method": args.method, "--epochs": args.epochs, "--lr": args.lr,
                "--batch-size": args.batch_size, "--seed": args.seed}
    if args.student_reset != "zero":  # (absent: the checkpoints written before the flag)
        settings["--student-reset"] = args.student_reset
    own = argparse.ArgumentParser(add_help=False)
    METHODS[args.method].add_args(own)
    for dest in vars(own.parse_args([])):
        settings["--" + dest.replace("_", "-")] = getattr(args, dest)
    return settings


def _rates(pred, ref):
    return None if ref is None else float((pred == ref).float().mean())


def run(args):
    """Check the flags and files, then distil into RUN; returns the metrics dict."""
    from .checkpoint import check_settings, load_checkpoint, plain, save_checkpoint
    from .distill import loader, lr_schedule, plot_curves, setup, start_epoch, train_one_epoch
    check_args(args)
    run_dir = Path(args.run)
    check_writable_dir(run_dir, "--run")
    data, graph, student, floating = load_graph(args.from_nir, args.dt, args.student_reset)
    in_shape, k = graph_shapes(graph)
    x, labels, scores, scores_t = load_data(args, in_shape, k)
    train_idx, test_idx = split(len(x), args.holdout)
    device, _, world = setup(args)
    if world > 1:
        raise UsageError("--from-nir runs in one process (no torchrun)")
    args.shift = 0
    steps = int(x.shape[1])
    if scores is None:
        scores, scores_t = graph_outputs(floating, x, args.teacher_reset)
    if args.method != "tser":
        scores_t = None
    elif scores_t is None:
        print(f"--method tser: --teacher-scores {args.teacher_scores} has one score per sample "
              f"(N, K); every step's target is that score (give (N, T, K) for per-step targets)")
    teacher_pred = scores.argmax(1)
    y = labels if labels is not None else teacher_pred
    settings = settings_of(args, _digest(data), _digest(x.numpy().tobytes()))
    path = run_dir / "student.pt"
    ckpt = None
    if args.resume and path.exists():
        ckpt = load_checkpoint(path, "student")
        check_settings(path, ckpt, settings)
    arch = None
    from export.from_nir import NIRStudent
    if isinstance(student, NIRStudent):
        arch = {"name": "nir", "config": {"nir": data}}
    heldout = run_dir / HELDOUT
    encoding = {"kind": "spikes", "timesteps": steps, "seed": SPLIT_SEED, "file": HELDOUT,
                "num_classes": k}  # file: relative to the run folder
    student = student.to(device)
    t_test, y_test = teacher_pred[test_idx], y[test_idx]
    start = {"teacher_accuracy": _rates(teacher_pred[test_idx], labels[test_idx])
             if labels is not None else None,
             "as_is_float_agreement": None, "as_is_float_accuracy": None}
    as_is_float = graph_scores(floating, x[test_idx], "zero").argmax(1)
    as_is_loihi = student_scores(student, x[test_idx], device).argmax(1)
    start.update(as_is_float_agreement=_rates(as_is_float, t_test),
                 as_is_float_accuracy=_rates(as_is_float, y_test) if labels is not None else None,
                 as_is_loihi_agreement=_rates(as_is_loihi, t_test),
                 as_is_loihi_accuracy=_rates(as_is_loihi, y_test) if labels is not None else None)
    loss_fn = build_loss(args.method, args, student, None).to(device)
    opt = torch.optim.Adam(list(student.parameters()) + list(loss_fn.parameters()), lr=args.lr)
    ds = Indexed(TensorDataset(x, y))  # (x (T, ...), y, index)
    train_dl = loader(Subset(ds, train_idx.tolist()), args.batch_size, True, args.seed, 1)
    sched = lr_schedule(opt, args.epochs, len(train_dl))
    first, history = 0, []
    if ckpt is not None:
        student.load_state_dict(ckpt["state_dict"])
        loss_fn.load_state_dict(ckpt["loss_state"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        first, history = ckpt["epoch"] + 1, ckpt["history"]
        print(f"student: resuming {path} after epoch {first}/{args.epochs}")
    scores_dev = scores.to(device)
    scores_t_dev = None if scores_t is None else scores_t.to(device)

    def distill_loss(xb, yb, idx):
        out = student(xb.transpose(0, 1))
        score_t = StudentOutput(logits_t=out.logits_t * xb.shape[1], spikes=out.spikes,
                                features=out.features)  # score_t.logits = the score (sum over T)
        t_out = teacher_output(scores_dev, scores_t_dev, idx.to(device))
        loss, parts = loss_fn(score_t, yb, t_out)
        return loss, score_t.logits, parts

    with new_folder(run_dir):
        print(f"--from-nir {args.from_nir}: {len(train_idx)} train / {len(test_idx)} held out, "
              f"T={steps}, {k} classes, student {type(student).__name__}, teacher "
              f"{'--teacher-scores' if args.teacher_scores else '--teacher-reset ' + args.teacher_reset}, method "
              f"{args.method}{' (per-step teacher)' if scores_t is not None else ''}, {device}")
        print("held out, no training: the file's float NIR (reset to zero) agreement "
              f"{start['as_is_float_agreement']:.4f}, Loihi-exact student (reset "
              f"{args.student_reset}) agreement {start['as_is_loihi_agreement']:.4f}")
        if not heldout.exists() or ckpt is None:
            write_heldout(heldout, x[test_idx], y_test, t_test, labels is not None)
        t0 = time.time()
        for epoch in range(first, args.epochs):
            start_epoch(train_dl, args.seed, epoch)
            loss_fn.train()
            e0 = time.time()
            row = train_one_epoch(student, distill_loss, train_dl, opt, sched, args, device, 1,
                                  f"student {epoch + 1}/{args.epochs}", args.quiet)
            pred = student_scores(student, x[test_idx], device).argmax(1)
            row.update(epoch=epoch + 1, agreement=_rates(pred, t_test),
                       accuracy=_rates(pred, y_test) if labels is not None else None,
                       time_s=time.time() - e0, lr=sched.get_last_lr()[0])
            row["test_acc"] = row["accuracy"] if labels is not None else row["agreement"]
            history.append(row)
            print(f"student epoch {epoch + 1}/{args.epochs}: loss {row['loss']:.4f} held-out "
                  f"agreement {row['agreement']:.4f}"
                  + (f" accuracy {row['accuracy']:.4f}" if labels is not None else "")
                  + f" ({row['time_s']:.1f}s)")
            save_checkpoint(path, student, "student", arch=arch, dataset="npy", encoding=encoding,
                            timesteps=steps, method=args.method, epoch=epoch, epochs=args.epochs,
                            complete=epoch + 1 == args.epochs, test_accuracy=row["test_acc"],
                            history=history, loss_state=loss_fn.state_dict(),
                            optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                            args=plain({k_: str(v) for k_, v in vars(args).items()}),
                            settings=plain(settings), start=start)
        if first >= args.epochs:
            print(f"student: {path} is already complete ({args.epochs} epochs)")
        last = history[-1] if history else {}
        metrics = {"from_nir": str(args.from_nir), "method": args.method,
                   "student_reset": args.student_reset,
                   "teacher": "scores" if args.teacher_scores else f"reset {args.teacher_reset}",
                   "timesteps": steps, "encoding": encoding, "train_samples": len(train_idx),
                   "heldout_samples": len(test_idx), **start,
                   "student_agreement": last.get("agreement"),
                   "student_accuracy": last.get("accuracy"), "train_time_s": time.time() - t0,
                   "history": history}
        atomic_write(run_dir / "train_metrics.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
        if history:
            plot_curves(run_dir / "curves.png", history, args.method)
        print(f"done: held-out agreement with the teacher {start['as_is_loihi_agreement']:.4f} "
              f"at the start -> {last.get('agreement', float('nan')):.4f} -> {run_dir}")
        if history and last["agreement"] < start["as_is_loihi_agreement"]:
            begin = "the graph itself" if args.student_reset == "zero" else \
                f"python -m export.subtract_reset {args.from_nir} OUT.nir --reset " \
                f"{args.student_reset}"
            print(f"note: training lowered held-out agreement below the start; the start, "
                  f"deployable as it is, is {begin} (docs/kd.md)")
    return metrics

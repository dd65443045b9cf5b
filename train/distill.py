"""Train (or load) an ANN teacher and distil a Loihi-deployable SNN student.

    python -m train.distill                       # mnist5k, runs/default, plain logit KD
    python -m train.distill --method none         # cross-entropy only
    python -m train.distill --from-nir G.nir --inputs X.npy --teacher-reset subtract  # your network
    torchrun --nproc_per_node 2 -m train.distill  # DistributedDataParallel (gloo on CPU, nccl on GPU)

Writes to the run dir: teacher.pt, student.pt (resumable with --resume), train_metrics.json,
curves.png. Read top to bottom: arguments, data, teacher, student, report.
"""
import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from common.cli import (UsageError, check_writable_dir, device_arg, json_object, non_negative_int,
                        positive_float, positive_int, run_guarded)
from common.files import atomic_write, new_folder, remove_stale_temps

from . import from_nir
from .checkpoint import (CheckpointError, check_settings, first_difference, load_checkpoint,
                         load_model, plain, save_checkpoint)
from .data import DATASETS, ENCODINGS, DataError, encode, load_dataset, random_shift
from .losses import METHODS, TeacherOutput, add_method_args, build_loss
from .models import ARCHS, STUDENTS, arch_of, build_model, default_arch
from .ratebp import rate_forward


OUTPUTS = ("teacher.pt", "student.pt", "train_metrics.json", "curves.png")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m train.distill", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist5k", choices=DATASETS, help="dataset")
    p.add_argument("--data-dir", default="data", help="root of on-disk datasets (cifar, dvs)")
    p.add_argument("--run", "--run-dir", dest="run", default="runs/default",
                   help="run directory for checkpoints and reports (--run-dir under torchrun, whose "
                        "own parser takes --run for its --run-path)")
    p.add_argument("--method", default="kd", choices=sorted(METHODS), help="distillation method")
    p.add_argument("--backprop", default="bptt", choices=("bptt", "rate"),
                   help="BPTT through all steps, or rate-based backprop (memory flat in T)")
    p.add_argument("--teacher", default=None, metavar="PATH",
                   help="load this teacher checkpoint instead of training one into RUN/teacher.pt")
    p.add_argument("--teacher-epochs", type=positive_int, default=8, help="teacher epochs")
    p.add_argument("--epochs", type=positive_int, default=15, help="student epochs")
    p.add_argument("--timesteps", type=positive_int, default=8, help="time steps T per sample")
    p.add_argument("--encoding", default=None, choices=ENCODINGS,
                   help="student input encoding; None = direct for 3-channel images (CIFAR), rate "
                        "otherwise; event data (cifar10-dvs) is always fed as frames")
    p.add_argument("--batch-size", type=positive_int, default=64, help="training batch size")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="student learning rate (Adam)")
    p.add_argument("--teacher-lr", type=positive_float, default=2e-3,
                   help="teacher learning rate (Adam)")
    p.add_argument("--shift", type=non_negative_int, default=None, metavar="N",
                   help="augment training images with random shifts of up to N pixels; "
                        "None = 2 for images of 28 px or more, else 0")
    p.add_argument("--train-samples", type=positive_int, default=None, metavar="N",
                   help="use only the first N training samples; None = all")
    p.add_argument("--student", default=None, choices=STUDENTS,
                   help="student architecture; None = the dataset's default (scnn up to 28 px, "
                        "sresnet above); resnet19 (CKDSNN) and resnet18 (TSER, ESD) are sresnet "
                        "with the papers' widths and blocks (docs/students.md)")
    p.add_argument("--student-config", type=json_object, default={}, metavar="JSON",
                   help='JSON merged into the default student config, e.g. \'{"channels": [8, 16]}\'')
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of initialisation, shuffling, augmentation and input spikes")
    p.add_argument("--device", type=device_arg, default="auto", metavar="{auto,cpu,cuda}",
                   help="where to train; auto = cuda when available")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (every flag that shapes the run must match)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_method_args(p)
    from_nir.add_args(p)  # --from-nir G.nir --inputs ... (train/from_nir.py)
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


# ---- process set-up ----------------------------------------------------------------------------

def setup(args):
    """Seed everything; join a torchrun process group if there is one. Returns (device, rank, world)."""
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(not use_cuda)
    return device, rank, world


def loader(ds, batch_size, shuffle, seed, world):
    if world > 1:
        sampler = DistributedSampler(ds, shuffle=shuffle, seed=seed)
        return DataLoader(ds, batch_size=batch_size, sampler=sampler)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


def start_epoch(dl, seed, epoch):
    """Seed shuffling and augmentation from (seed, epoch) alone, so --resume continues exactly."""
    torch.manual_seed(seed * 1_000_003 + epoch)
    if isinstance(dl.sampler, DistributedSampler):
        dl.sampler.set_epoch(epoch)
    else:
        dl.generator.manual_seed(seed * 1_000_003 + epoch)


def sync_buffers(model, world):
    """DDP syncs BatchNorm statistics only at forward time: make every rank hold rank 0's."""
    if world > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


def all_sum(values, device, world):
    """Sum a list of numbers over processes (identity when not distributed)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


# ---- evaluation --------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, dl, device, world, encoding=None):
    """Accuracy over the (distributed) test loader; students get the recorded encoding (epoch 0)."""
    model.eval()
    correct = total = 0
    for x, y, idx in dl:
        x, y = x.to(device), y.to(device)
        logits = model(encode(x, idx, encoding)).logits if encoding else model(x)
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    correct, total = all_sum([correct, total], device, world)
    return correct / max(total, 1)


def progress(dl, desc, quiet):
    return tqdm(dl, desc=desc, leave=False, disable=quiet, dynamic_ncols=True)


def lr_schedule(opt, epochs, steps_per_epoch):
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=epochs * steps_per_epoch,
        pct_start=0.15)


def train_one_epoch(net, compute_loss, dl, opt, sched, args, device, world, desc, quiet):
    """One pass over dl with one optimizer and LR-schedule step per batch, for teacher and
    student alike: compute_loss(x, y, idx) -> (loss, logits, {name: float}). Returns the
    per-sample means of the loss, its parts and the training accuracy over all processes."""
    net.train()
    sums, n = {}, 0
    for x, y, idx in progress(dl, desc, quiet):
        x, y = augment(x, args).to(device), y.to(device)
        loss, logits, parts = compute_loss(x, y, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        parts = {"loss": loss.item(), **parts,
                 "train_acc": (logits.argmax(1) == y).float().mean().item()}
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(y)
        n += len(y)
    keys = sorted(sums)
    totals = all_sum([sums[k] for k in keys] + [n], device, world)
    return {k: v / totals[-1] for k, v in zip(keys, totals)}


# ---- what --resume must match ------------------------------------------------------------------

def teacher_settings(args, info, n_train, world) -> dict:
    """Everything that shapes a teacher trained into RUN/teacher.pt, keyed by flag."""
    return {"--dataset": info.name, "--teacher-epochs": args.teacher_epochs,
            "--teacher-lr": args.teacher_lr, "--batch-size": args.batch_size,
            "--train-samples": n_train, "--shift": args.shift, "--seed": args.seed,
            "processes (torchrun --nproc_per_node)": world,
            "teacher architecture": default_arch(info, student=False)}


def student_settings(args, info, encoding, arch, n_train, world, teacher=None) -> dict:
    """Everything that shapes the student run, keyed by flag: the data and its order, the LR
    schedule, the model, the loss and its flags, and the teacher's weights when the loss uses it."""
    settings = {"--dataset": info.name, "--method": args.method, "--backprop": args.backprop,
                "--epochs": args.epochs, "--timesteps": args.timesteps,
                "--encoding": encoding["kind"], "--batch-size": args.batch_size, "--lr": args.lr,
                "--train-samples": n_train, "--shift": args.shift, "--seed": args.seed,
                "--student/--student-config": arch,
                "processes (torchrun --nproc_per_node)": world}
    own = argparse.ArgumentParser(add_help=False)
    METHODS[args.method].add_args(own)  # the method's own flags (--kd-tau, --samd, ...)
    for dest in vars(own.parse_args([])):
        settings["--" + dest.replace("_", "-")] = getattr(args, dest)
    if teacher is not None:
        settings["teacher weights (--teacher or RUN/teacher.pt)"] = weight_digest(teacher)[:16]
    return settings


def student_arch(args, info) -> dict:
    """{'name', 'config'} of the student: --student (or the dataset's default) with
    --student-config merged in, fully resolved. UsageError names a bad key or value."""
    arch = default_arch(info, student=True, name=args.student)
    known = [k for k in inspect.signature(ARCHS[arch["name"]]).parameters
             if k not in ("in_shape", "num_classes")]  # these two come from the dataset
    for key in args.student_config:
        if key not in known:
            raise UsageError(f"--student-config: unknown key {key!r} for student {arch['name']} "
                             f"(known: {', '.join(known)})")
    arch["config"].update(args.student_config)
    try:
        model = build_model(arch)
    except Exception as e:  # any value the constructor cannot use
        text = str(e).strip().splitlines()
        raise UsageError(f"--student-config {json.dumps(args.student_config)}: cannot build "
                         f"{arch['name']}: {text[0] if text else type(e).__name__}") from None
    return plain(arch_of(model))


# ---- teacher -----------------------------------------------------------------------------------

def existing_teacher(args, path, settings, rank):
    """RUN/teacher.pt's checkpoint when it can be used: complete, or to continue with --resume;
    None when there is none or it was trained with other settings (a new teacher is trained;
    with --resume that is refused, naming the flag)."""
    if not path.exists():
        return None
    ckpt = load_checkpoint(path, "teacher")
    diff = first_difference(ckpt, settings)
    if diff and args.resume:
        check_settings(path, ckpt, settings)
    if diff:
        if rank == 0:
            print(f"teacher: {path} was trained with {diff[0]} {diff[1]}, not {diff[2]}; "
                  f"training a new teacher (--teacher {path} would reuse it)")
        return None
    return ckpt if ckpt.get("complete") or args.resume else None


def train_teacher(args, info, train_dl, test_dl, device, rank, world, run):
    path = run / "teacher.pt"
    if args.teacher:
        teacher, ckpt = load_model(args.teacher, "teacher")
        if tuple(ckpt["arch"]["config"].get("in_shape", ())) != tuple(info.in_shape):
            raise CheckpointError(f"{args.teacher}: teacher input shape "
                                  f"{ckpt['arch']['config'].get('in_shape')} != dataset {info.in_shape}")
        return teacher.to(device), evaluate(teacher.to(device), test_dl, device, world)
    settings = teacher_settings(args, info, len(train_dl.dataset), world)
    start, ckpt = 0, existing_teacher(args, path, settings, rank)
    if ckpt is not None and ckpt.get("complete"):
        teacher, _ = load_model(path, "teacher")
        if rank == 0:
            print(f"teacher: loaded {path} (test acc {ckpt['test_accuracy']:.4f})")
        return teacher.to(device), ckpt["test_accuracy"]
    teacher = build_model(default_arch(info, student=False)).to(device)
    opt = torch.optim.Adam(teacher.parameters(), lr=args.teacher_lr, weight_decay=1e-4)
    sched = lr_schedule(opt, args.teacher_epochs, len(train_dl))
    if ckpt is not None:
        teacher.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start = ckpt["epoch"] + 1
    net = DistributedDataParallel(teacher) if world > 1 else teacher

    def cross_entropy(x, y, idx):
        logits = net(x)
        return F.cross_entropy(logits, y), logits, {}

    acc = 0.0
    for epoch in range(start, args.teacher_epochs):
        start_epoch(train_dl, args.seed, epoch)
        t0 = time.time()
        row = train_one_epoch(net, cross_entropy, train_dl, opt, sched, args, device, world,
                              f"teacher {epoch + 1}/{args.teacher_epochs}", args.quiet or rank)
        sync_buffers(teacher, world)
        acc = evaluate(teacher, test_dl, device, world)
        done = epoch + 1 == args.teacher_epochs
        if rank == 0:
            print(f"teacher epoch {epoch + 1}/{args.teacher_epochs}: loss {row['loss']:.4f} "
                  f"train acc {row['train_acc']:.4f} test acc {acc:.4f} "
                  f"({time.time() - t0:.1f}s)")
            save_checkpoint(path, teacher, "teacher", dataset=info.name, epoch=epoch,
                            epochs=args.teacher_epochs, complete=done, test_accuracy=acc,
                            optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                            settings=plain(settings))
    return teacher, acc


def augment(x, args):
    """Random shifts for image batches (B, C, H, W); event frames pass unchanged."""
    return random_shift(x, args.shift) if x.dim() == 4 else x


def teacher_output(teacher, x):
    with torch.no_grad():
        logits, feats = teacher(x, return_features=True)
    return TeacherOutput(logits=logits, features=feats, fc_weight=teacher.fc.weight.detach())


# ---- student -----------------------------------------------------------------------------------

class RateForward(torch.nn.Module):
    """Wrap a student so that its forward is rate-based backprop (and DDP can wrap that)."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, x):
        return rate_forward(self.student, x)


def train_student(args, info, encoding, teacher, train_dl, test_dl, device, rank, world, run):
    path = run / "student.pt"
    arch = student_arch(args, info)
    student = build_model(arch).to(device)
    loss_fn = build_loss(args.method, args, student, teacher).to(device)
    params = list(student.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    sched = lr_schedule(opt, args.epochs, len(train_dl))
    settings = student_settings(args, info, encoding, arch, len(train_dl.dataset), world,
                                teacher if loss_fn.needs_teacher else None)
    start, history = 0, []
    if args.resume and path.exists():
        ckpt = load_checkpoint(path, "student")
        check_settings(path, ckpt, settings)
        student.load_state_dict(ckpt["state_dict"])
        loss_fn.load_state_dict(ckpt["loss_state"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start, history = ckpt["epoch"] + 1, ckpt["history"]
        if rank == 0:
            print(f"student: resuming {path} after epoch {start}/{args.epochs}")
    net = RateForward(student) if args.backprop == "rate" else student
    net = DistributedDataParallel(net) if world > 1 else net
    for epoch in range(start, args.epochs):
        start_epoch(train_dl, args.seed, epoch)
        loss_fn.train()
        t0 = time.time()

        def distill_loss(x, y, idx, epoch=epoch):
            t_out = teacher_output(teacher, x) if loss_fn.needs_teacher else None
            out = net(encode(x, idx, encoding, epoch=epoch + 1))
            loss, parts = loss_fn(out, y, t_out)
            return loss, out.logits, parts

        row = train_one_epoch(net, distill_loss, train_dl, opt, sched, args, device, world,
                              f"student {epoch + 1}/{args.epochs}", args.quiet or rank)
        row.update(epoch=epoch + 1, test_acc=evaluate(student, test_dl, device, world, encoding),
                   time_s=time.time() - t0, lr=sched.get_last_lr()[0])
        history.append(row)
        if rank == 0:
            print(f"student epoch {epoch + 1}/{args.epochs}: loss {row['loss']:.4f} "
                  f"train acc {row['train_acc']:.4f} test acc {row['test_acc']:.4f} "
                  f"({row['time_s']:.1f}s)")
            save_checkpoint(path, student, "student", dataset=info.name, encoding=encoding,
                            timesteps=encoding["timesteps"], method=args.method, epoch=epoch,
                            epochs=args.epochs, complete=epoch + 1 == args.epochs,
                            test_accuracy=row["test_acc"], history=history,
                            loss_state=loss_fn.state_dict(), optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(), args=vars(args),
                            settings=plain(settings))
    if start >= args.epochs and rank == 0:
        print(f"student: {path} is already complete ({args.epochs} epochs)")
    return student, history


# ---- report ------------------------------------------------------------------------------------

def weight_digest(model):
    """SHA-256 of all parameters' bytes: equal digests mean bit-identical weights."""
    import hashlib
    h = hashlib.sha256()
    for p in model.state_dict().values():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def rank_digests(model, world):
    """Every process's weight digest, gathered (DDP replicas must end bit-identical)."""
    digests = [None] * world
    if world > 1:
        dist.all_gather_object(digests, weight_digest(model))
    else:
        digests = [weight_digest(model)]
    return digests


def write_report(run, args, info, encoding, teacher_acc, student_acc, history, seconds, digests):
    metrics = {"method": args.method, "backprop": args.backprop, "dataset": info.name,
               "timesteps": encoding["timesteps"], "encoding": encoding,
               "teacher_accuracy": teacher_acc, "student_accuracy": student_acc,
               "train_time_s": seconds, "processes": len(digests),
               "weight_sha256_per_rank": digests, "history": history}
    atomic_write(run / "train_metrics.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
    plot_curves(run / "curves.png", history, args.method)


def plot_curves(path, history, method):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [h["loss"] for h in history], marker="o")
    a.set(xlabel="epoch", ylabel="training loss", title=f"student ({method})")
    b.plot(epochs, [h["train_acc"] for h in history], marker="o", label="train")
    b.plot(epochs, [h["test_acc"] for h in history], marker="o", label="test")
    b.set(xlabel="epoch", ylabel="accuracy")
    b.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def encoding_kind(requested, info) -> str:
    """--encoding as used: event data is always 'frames'; else the request, or by default
    'direct' for 3-channel images (CIFAR) and 'rate' otherwise (as --help says)."""
    if info.frames:
        return "frames"
    return requested or ("direct" if info.in_shape[0] == 3 else "rate")


def prepare_data(args, world):
    """Datasets, loaders and the input encoding for these arguments (resolves --shift)."""
    train_ds, test_ds, info = load_dataset(args.dataset, args.data_dir, timesteps=args.timesteps)
    if args.shift is None:
        args.shift = 2 if info.in_shape[-1] >= 28 else 0
    if args.train_samples is not None:
        train_ds = Subset(train_ds, range(min(args.train_samples, len(train_ds))))
    encoding = {"kind": encoding_kind(args.encoding, info), "timesteps": args.timesteps,
                "seed": args.seed}
    train_dl = loader(train_ds, args.batch_size, True, args.seed, world)
    test_dl = loader(test_ds, 256, False, args.seed, world)
    return train_ds, test_ds, info, encoding, train_dl, test_dl


def run(args):
    """Check everything that can be checked (flags, folder, data, student config, --teacher,
    --resume) before creating the run folder or training anything; then train and report."""
    from_nir.check_args(args)
    if args.from_nir is not None:  # distil from the user's own network (train/from_nir.py)
        return from_nir.run(args)
    run_dir = Path(args.run)
    check_writable_dir(run_dir, "--run")
    device, rank, world = setup(args)
    train_ds, test_ds, info, encoding, train_dl, test_dl = prepare_data(args, world)
    arch = student_arch(args, info)
    student_ckpt = run_dir / "student.pt"
    if args.resume and student_ckpt.exists():  # refuse other flags now, not after the teacher
        check_settings(student_ckpt, load_checkpoint(student_ckpt, "student"),
                       student_settings(args, info, encoding, arch, len(train_ds), world))
    needs_teacher = METHODS[args.method].needs_teacher
    teacher = teacher_acc = None
    if args.teacher:  # read (and checked) before anything is written
        teacher, teacher_acc = train_teacher(args, info, train_dl, test_dl, device, rank, world,
                                             run_dir)
    with new_folder(run_dir):  # removed again if the run fails while it is empty
        if rank == 0:
            stale = [p for name in OUTPUTS for p in remove_stale_temps(run_dir, name)]
            if stale:
                print(f"removed {len(stale)} temp file(s) left by an interrupted run: "
                      f"{', '.join(p.name for p in stale)}")
            print(f"{info.name}: {len(train_ds)} train / {len(test_ds)} test, T={args.timesteps}, "
                  f"{encoding['kind']} input, method {args.method}, {device}, {world} process(es)")
        t0 = time.time()
        if needs_teacher and teacher is None:
            teacher, teacher_acc = train_teacher(args, info, train_dl, test_dl, device, rank, world,
                                                 run_dir)
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        student, history = train_student(args, info, encoding, teacher, train_dl, test_dl, device,
                                         rank, world, run_dir)
        student_acc = history[-1]["test_acc"] if history else float("nan")
        digests = rank_digests(student, world)
        if rank == 0:
            if len(set(digests)) > 1:
                print("warning: DDP replicas ended with different weights", file=sys.stderr)
            write_report(run_dir, args, info, encoding, teacher_acc, student_acc, history,
                         time.time() - t0, digests)
            t_txt = "n/a" if teacher_acc is None else f"{teacher_acc:.4f}"
            print(f"done in {time.time() - t0:.0f}s: teacher acc {t_txt}, student acc "
                  f"{student_acc:.4f} -> {run_dir}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"teacher_accuracy": teacher_acc, "student_accuracy": student_acc, "history": history}


def main(argv=None):
    """Exit codes (common.cli): 0 done, 2 bad input (a flag, file, checkpoint, dataset, the
    machine or the disk), with one line 'error: ...' on stderr."""
    args = parse_args(argv)

    def work():
        run(args)

    return run_guarded(work, DataError, CheckpointError)


if __name__ == "__main__":
    sys.exit(main())

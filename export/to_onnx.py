"""Export the ANN teacher to ONNX and check it against PyTorch.

    python -m export.to_onnx --run runs/default     # teacher.pt -> teacher.onnx, checked

The model is exported with a dynamic batch axis, validated with onnx.checker and run with
onnxruntime on real test images; its logits must equal PyTorch's within ATOL (absolute) + RTOL
(relative). The file is put in place only when every check passes.
"""
import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from tqdm import tqdm

from common.cli import positive_int
from train.checkpoint import load_model
from train.data import test_batches

from .checked import run_export, write_checked

ATOL, RTOL = 1e-4, 1e-4
OPSET = 17


def export_onnx(model, in_shape, path):
    """torch.onnx.export with input 'images' (B, C, H, W) and output 'logits' (B, K), B dynamic."""
    model.eval()
    example = torch.zeros(2, *in_shape)
    with warnings.catch_warnings():  # the teacher's `return_features` flag is traced as a constant
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, example, str(path), input_names=["images"],
                          output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=OPSET)
    onnx.checker.check_model(str(path), full_check=True)


def compare(path, model, batches) -> dict:
    """Run onnxruntime and PyTorch on every batch: max |diff| and whether all are within tolerance.
    """
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, ok, n = 0.0, True, 0
    with torch.no_grad():
        for x in batches:
            ref = model(x).numpy()
            got = session.run(["logits"], {"images": x.numpy()})[0]
            worst = max(worst, float(np.abs(got - ref).max()))
            ok = ok and bool(np.allclose(got, ref, atol=ATOL, rtol=RTOL))
            n += x.shape[0]
    return {"max_abs_diff": worst, "ok": ok, "samples": n}


def sample_images(dataset, samples, data_dir, batch_size=64):
    """(B, C, H, W) batches of the first `samples` test images."""
    _, _, batches = test_batches(dataset, None, data_dir, samples, batch_size)
    return (x for x, _ in batches)


def export(checkpoint, out, samples=256, data_dir="data", log=print) -> dict:
    model, ckpt = load_model(checkpoint, "teacher")
    in_shape = tuple(model.config["in_shape"])

    def check(tmp):
        batches = tqdm(sample_images(ckpt.get("dataset", "mnist5k"), samples, data_dir),
                       total=-(-samples // 64), desc="onnx parity", unit="batch", file=sys.stderr)
        return compare(tmp, model, batches)

    return write_checked(out, lambda tmp: export_onnx(model, in_shape, tmp), check, _summary, log)


def _summary(r) -> str:
    return (f"onnxruntime vs PyTorch on {r['samples']} test images: max |diff| "
            f"{r['max_abs_diff']:.3g} (tolerance atol {ATOL:g} + rtol {RTOL:g}): "
            f"{'PASS' if r['ok'] else 'FAIL'}")


def main(argv=None):
    """Exit codes: 0 written, 1 the check failed (nothing written), 2 bad input (export.checked)."""
    p = argparse.ArgumentParser(prog="python -m export.to_onnx",
                                description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/default", help="run directory (default: runs/default)")
    p.add_argument("--checkpoint", help="teacher checkpoint (default: RUN/teacher.pt)")
    p.add_argument("--out", help="ONNX file to write (default: RUN/teacher.onnx)")
    p.add_argument("--samples", type=positive_int, default=256,
                   help="test images for the parity check (default: 256)")
    p.add_argument("--data-dir", default="data", help="dataset folder (default: data)")
    args = p.parse_args(argv)
    run = Path(args.run)
    checkpoint = Path(args.checkpoint or run / "teacher.pt")
    out = Path(args.out or run / "teacher.onnx")
    run_export(out, "--out" if args.out else "--run",
               lambda: export(checkpoint, out, args.samples, args.data_dir),
               (onnx.checker.ValidationError,))


if __name__ == "__main__":
    main()

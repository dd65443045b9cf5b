"""A short BPTT loop shared by the torch-based tools (run by hand, see make_fixtures.py)."""
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import batches, digits, predictions, test_inputs


def train(step_fn, params, steps=300, batch=64, lr=2e-3, seed=1, flat=False):
    """Adam on cross-entropy of step_fn(spikes (B, T, ...) float) -> scores (B, K)."""
    x_train, y_train, _, _ = digits()
    if flat:
        x_train = x_train.reshape(len(x_train), -1)
    opt = torch.optim.Adam(params, lr=lr)
    for i, (xb, yb) in enumerate(batches(x_train, y_train, batch, steps, seed)):
        scores = step_fn(torch.from_numpy(xb).float())
        loss = torch.nn.functional.cross_entropy(scores, torch.from_numpy(yb))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 100 == 0 or i == steps - 1:
            print(f"  step {i}: loss {loss.item():.3f}", flush=True)


def run_eval(step_fn, x):
    """Per-step outputs (N, T, K) float32 of step_fn over x in blocks, no grad."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 50):
            out.append(step_fn(torch.from_numpy(x[i:i + 50]).float()).numpy())
    return np.concatenate(out).astype(np.float32)


CACHE = Path(tempfile.gettempdir()) / "producers_cache"


def train_cached(name, module, step_fn, **kw):
    """train() unless /tmp/producers_cache/<name>.pt holds this module's trained weights (so a
    failed export does not retrain)."""
    path = CACHE / f"{name}.pt"
    if path.exists():
        module.load_state_dict(torch.load(path), strict=False)
        return
    # nn.Module's own methods: Rockpool's modules override parameters() with a dict
    skip = kw.pop("frozen", ())
    params = [p for k, p in torch.nn.Module.named_parameters(module)
              if not any(f in k for f in skip)]
    train(step_fn, params, **kw)
    CACHE.mkdir(exist_ok=True)
    torch.save({k: v.detach() for k, v in torch.nn.Module.named_parameters(module)}, path)


def train_and_test(name, net, run, **kw):
    """train_cached on spike counts of run (spikes (B, T, ...) -> per-step outputs), then the
    tool's own run on the held-out digits: (x, labels, tool_out (N, T, K), tool_pred)."""
    train_cached(name, net, lambda x: run(x).sum(1), **kw)
    net.eval()
    x, labels = test_inputs()
    tool_out = run_eval(run, x)
    return x, labels, tool_out, predictions(tool_out.sum(1))

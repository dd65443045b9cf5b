"""How stable a --from-nir teacher's predictions are: the noise floor of 'agreement with the tool'.

    python -m bench.teacher_stability OUT.json [--flips 0.001,0.01] [--draws 3]

For each setting, the teacher's predictions on held-out inputs are compared with its own
predictions on the same inputs with a fraction of the input spike bits flipped (seeded draws);
also the share of samples whose top two scores tie or lie within 2 of each other. Settings
(the teachers of bench.from_nir_fixtures):
- snntorch_cnn: the fixture's graph with reset "subtract-next" (equal to snnTorch on every spike),
  on its 200 held-out digits;
- sinabs_if_cnn: reset "subtract", on its 200 held-out digits;
- braille: ../shared/peer/braille_noDelay_noBias_subtract.nir with reset "subtract" on the 200
  held-out random samples of `bench.from_nir_fixtures --random-spikes --rate 0.05` (numpy seed
  0, T = 256, the 200 after the first 1000).
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "producers"
BRAILLE = ROOT.parent / "shared" / "peer" / "braille_noDelay_noBias_subtract.nir"


def settings():
    """(name, graph path, reset, held-out inputs (N, T, ...) float32)."""
    for name, reset in (("snntorch_cnn", "subtract-next"), ("sinabs_if_cnn", "subtract")):
        x = np.load(FIXTURES / name / "data.npz")["x"].astype(np.float32)
        yield name, FIXTURES / name / "graph.nir", reset, x
    x = (np.random.default_rng(0).random((1200, 256, 12)) < 0.05).astype(np.float32)[1000:]
    yield "braille", BRAILLE, "subtract", x


def stability(graph, reset, x, flips, draws):
    from bench.from_nir_fixtures import margins
    from train.from_nir import graph_scores, load_graph
    _, _, _, floating = load_graph(graph)
    scores = graph_scores(floating, torch.from_numpy(x), reset).numpy()
    margin = margins(scores)
    row = {"samples": len(x), "reset": reset, "tie": float(np.mean(margin == 0)),
           "within_2": float(np.mean(margin <= 2)), "flips": {}}
    for p in flips:
        agree = []
        for seed in range(draws):
            noisy = x.copy()
            mask = np.random.default_rng(seed).random(x.shape) < p
            noisy[mask] = 1 - noisy[mask]
            again = graph_scores(floating, torch.from_numpy(noisy), reset).numpy()
            agree.append(float(np.mean(again.argmax(1) == scores.argmax(1))))
        row["flips"][str(p)] = agree
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="summary JSON")
    p.add_argument("--flips", default="0.001,0.01", help="fractions of input bits flipped")
    p.add_argument("--draws", type=int, default=3, help="seeded draws per fraction")
    args = p.parse_args(argv)
    flips = [float(v) for v in args.flips.split(",")]
    summary = {}
    for name, graph, reset, x in settings():
        summary[name] = row = stability(graph, reset, x, flips, args.draws)
        print(f"{name} ({reset}): ties {row['tie']:.3f}, top two within 2: {row['within_2']:.3f}; "
              + "; ".join(f"{k} of the bits flipped: agrees with itself on "
                          f"{', '.join(f'{a:.3f}' for a in v)}" for k, v in row["flips"].items()))
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

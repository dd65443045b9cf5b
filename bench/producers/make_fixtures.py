"""Build the producer fixtures (tests/fixtures/producers/) with the real tools' own NIR exporters.

Run by hand, never by CI (CI must not install these tools), from the repository root, in two
environments outside the repository (sinabs 3.1.3 and Rockpool 3.1.0 require nir <= 1.0.4;
snnTorch 1.0.0's exporter needs nir >= 1.0.7 (it passes v_reset), SpikingJelly 2.0.0 nir >= 1.0.7
and nirtorch 2.6). constraints.txt holds `torch==2.13.0` (the CPU wheel on this machine's disk),
so that no tool pulls a CUDA torch:

    python3.11 -m venv /work/toolsenv
    /work/toolsenv/bin/pip install torch==2.13.0
    /work/toolsenv/bin/pip install -c constraints.txt sinabs rockpool spyx jax nir nirtorch mlxtend
    python3.11 -m venv /work/toolsenv_sj
    /work/toolsenv_sj/bin/pip install torch==2.13.0
    /work/toolsenv_sj/bin/pip install -c constraints.txt "spikingjelly[nir]==2.0.0" \
        snntorch==1.0.0 norse mlxtend
    OMP_NUM_THREADS=1 /work/toolsenv/bin/python bench/producers/make_fixtures.py sinabs rockpool \
        spyx
    OMP_NUM_THREADS=1 /work/toolsenv_sj/bin/python bench/producers/make_fixtures.py snntorch norse \
        spikingjelly

Training (300 Adam steps of 64 digits, CPU) is cached in /tmp/producers_cache, so a rerun only
evaluates and exports. Data, initialisation and batch seeds are fixed.

Each fixture: graph.nir (the tool's exporter, written with nir.write), data.npz (held-out input
spikes `x` (N, T, ...) uint8, `labels`, the tool's own per-step output `tool_out` (N, T, K) and
predictions `tool_pred`, and where cheap `file_out` / `file_pred`: the tool run under the file's
semantics; for the issue-21 CNNs also `x_distill`, `labels_distill`, `tool_out_distill`: 1000
training digits with the tool's outputs), meta.json (tool, versions, exporter call, dt, reset,
accuracy, exporter losses).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TOOLS = ("snntorch", "sinabs", "norse", "rockpool", "spyx", "spikingjelly")


def main(argv):
    names = argv or list(TOOLS)
    for name in names:
        if name not in TOOLS:
            sys.exit(f"unknown tool {name!r}; one of {', '.join(TOOLS)}")
    import torch
    torch.set_num_threads(1)
    for name in names:
        module = __import__(f"tool_{name}")
        module.make()


if __name__ == "__main__":
    main(sys.argv[1:])

"""Build the producer fixtures (tests/fixtures/producers/) with the real tools' own NIR exporters.

Run by hand, never by CI (CI must not install these tools), from the repository root in a
separate environment that has the tools, e.g.

    python3.11 -m venv /work/toolsenv
    /work/toolsenv/bin/pip install torch==2.13.0          # the CPU wheel on disk
    /work/toolsenv/bin/pip install -c constraints.txt snntorch==1.0.0 sinabs norse rockpool \
        nir nirtorch mlxtend scikit-learn spyx jax       # constraints.txt: torch==2.13.0
    # SpikingJelly 2.0.0 needs nir >= 1.0.7 and nirtorch 2.6, sinabs and rockpool nir <= 1.0.4:
    python3.11 -m venv /work/toolsenv_sj && ... pip install torch==2.13.0 "spikingjelly[nir]" mlxtend
    OMP_NUM_THREADS=1 /work/toolsenv/bin/python bench/producers/make_fixtures.py snntorch sinabs norse rockpool spyx
    OMP_NUM_THREADS=1 /work/toolsenv_sj/bin/python bench/producers/make_fixtures.py spikingjelly

Each fixture: graph.nir (the tool's exporter, written with nir.write), data.npz (held-out input
spikes `x` (N, T, ...) uint8, `labels`, the tool's own per-step output `tool_out` (N, T, K) and
predictions `tool_pred`, and where cheap `file_out` / `file_pred`: the tool run under the file's
semantics), meta.json (tool, versions, exporter call, dt, reset, accuracy, exporter losses).
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

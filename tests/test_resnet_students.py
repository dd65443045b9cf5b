"""The seed papers' ResNets as students (--student resnet19 / resnet18): sresnet configs with the
papers' widths and blocks; layer counts and widths at 32 px, a forward pass, NIR export, and the
--student flag through train.distill's argument handling."""
import nir
import pytest
import torch

from export.to_nir import compare, student_to_nir
from train.data import DatasetInfo
from train.distill import parse_args, student_arch
from train.models import (PAPER_STUDENTS, QuantConv2d, QuantLinear, SpikingResNet, build_model,
                          default_arch)

CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10)

# (stage widths, blocks per stage) from the papers (docs/students.md)
PAPERS = {"resnet19": ((128, 256, 512), (3, 3, 2)),
          "resnet18": ((64, 128, 256, 512), (2, 2, 2, 2))}


def expected_layers(widths, blocks, size=32):
    """{spiking layer: (C, H, W)} of an sresnet at stem stride 1: stage i > 0 halves the size in
    its first block, the head halves it once more."""
    shapes = {"stem_lif": (widths[0], size, size)}
    k = 0
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            if i > 0 and j == 0:
                size = (size + 1) // 2
            shapes[f"blocks.{k}.lif_a"] = shapes[f"blocks.{k}.lif_b"] = (w, size, size)
            k += 1
    shapes["head_lif"] = (widths[-1], (size + 1) // 2, (size + 1) // 2)
    return shapes


def synaptic_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_paper_student_structure_at_32px(name):
    """Full size, no forward: widths, blocks, 1x1 shortcuts only where the shape changes, and the
    weight count by hand."""
    widths, blocks = PAPERS[name]
    arch = default_arch(CIFAR, student=True, name=name)
    assert arch["name"] == "sresnet"                     # 'resnet19' in ARCHS is the ANN teacher
    assert PAPER_STUDENTS[name] == dict(widths=widths, blocks=blocks)
    model = build_model(arch)
    assert isinstance(model, SpikingResNet) and model.config["stem_stride"] == 1
    assert len(model.blocks) == sum(blocks)
    layers = synaptic_layers(model)
    shortcuts = [n for n in layers if n.endswith("shortcut")]
    assert len(shortcuts) == len(widths) - 1             # first block of stages 2.. only
    # stem + 2 convs per block + head + readout
    assert len(layers) - len(shortcuts) == 1 + 2 * sum(blocks) + 2
    expected = 3 * widths[0] * 9                          # stem
    cin = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            expected += cin * w * 9 + w * w * 9 + (cin * w if cin != w or (i and not j) else 0)
            cin = w
    head = expected_layers(widths, blocks)["head_lif"]
    expected += cin * cin * 9 + head[0] * head[1] * head[2] * 10
    assert sum(p.numel() for p in model.parameters() if p.dim() > 1) == expected
    if name == "resnet19":
        assert expected == 14_994_816                     # the 15.0 M of issue 19


def test_resnet19_full_size_forward():
    """One sample, T = 1, at full width: every layer has the expected shape."""
    torch.manual_seed(0)
    model = build_model(default_arch(CIFAR, student=True, name="resnet19")).eval()
    with torch.no_grad():
        out = model((torch.rand(1, 1, 3, 32, 32) < 0.2).float())
    assert {k: tuple(v.shape[2:]) for k, v in out.spikes.items()} == \
        expected_layers(*PAPERS["resnet19"])
    assert out.logits.shape == (1, 10)


def narrow(name, widths):
    """The paper's blocks at reduced widths (a cheap stand-in for forward and export)."""
    arch = default_arch(CIFAR, student=True, name=name)
    arch["config"]["widths"] = widths
    return build_model(arch)


@pytest.mark.parametrize("name, widths", [("resnet19", (8, 16, 32)),
                                          ("resnet18", (4, 8, 16, 32))])
def test_paper_student_forward_and_nir(name, widths):
    """T = 2, batch 2 at reduced widths: shapes, and the NIR export runs in the reference
    interpreter with the same spikes in every layer."""
    torch.manual_seed(0)
    model = narrow(name, widths).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)                                   # so that deep layers spike too
    x = (torch.rand(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    with torch.no_grad():
        out = model(x)
    shapes = expected_layers(widths, PAPERS[name][1])
    assert {k: tuple(v.shape[2:]) for k, v in out.spikes.items()} == shapes
    assert out.logits_t.shape == (2, 2, 10)
    assert out.spikes["head_lif"].sum() > 0, "the head is silent: the check would prove little"
    graph = student_to_nir(model)
    neurons = [n for n, node in graph.nodes.items() if isinstance(node, (nir.CubaLIF, nir.LIF))]
    assert sorted(neurons) == sorted(shapes)
    report = compare(graph, out, x)
    assert report["ok"], report


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_student_flag(name):
    """--student resnet19 / resnet18 resolve to sresnet with the papers' shape, and
    --student-config still overrides (here: narrower widths)."""
    arch = student_arch(parse_args(["--student", name]), CIFAR)
    assert arch["name"] == "sresnet"
    assert tuple(arch["config"]["widths"]) == PAPERS[name][0]
    assert tuple(arch["config"]["blocks"]) == PAPERS[name][1]
    widths = [4] * len(PAPERS[name][0])
    small = student_arch(parse_args(["--student", name, "--student-config",
                                     f'{{"widths": {widths}}}']), CIFAR)
    assert small["config"]["widths"] == widths and \
        tuple(small["config"]["blocks"]) == PAPERS[name][1]
    with pytest.raises(SystemExit):
        parse_args(["--student", "resnet20"])
    with pytest.raises(ValueError, match="unknown student 'resnet20'"):
        default_arch(CIFAR, student=True, name="resnet20")

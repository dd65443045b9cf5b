"""Teachers (ANNs) and Loihi-deployable students (snnTorch SNNs).

Students take input of shape (T, B, C, H, W) (spikes from a rate encoder, or analog frames for direct
input) and run layer by layer: every synaptic layer is applied to all T steps at once, every neuron
layer loops over T (the network is feed-forward, so this equals a step-by-step run).
The readout is a non-spiking integrator: per-step logits z[t] = W s[t], logits = mean_t z[t]
(= integrator state after T steps / T). See `StudentOutput`.

Each student declares its layer graph once, in `dataflow(x, ops)`: `ops.synapse`,
`ops.neuron` (summing its list of input currents), `ops.flatten` and `ops.readout` give it a
meaning. `SequenceOps` runs it on whole sequences (the forward pass); train.ratebp runs it on
one step or on rates; export.to_nir builds the NIR graph from it.
"""
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .layers import QuantConv2d, QuantLinear
from .neurons import LoihiCUBA
from .quant import WEIGHT_MAX


@dataclass
class StudentOutput:
    logits_t: torch.Tensor                                  # (T, B, K) per-step logits
    spikes: dict = field(default_factory=dict)              # layer name -> (T, B, ...) spikes
    features: dict = field(default_factory=dict)            # stage name -> (T, B, C, H, W) spikes

    @property
    def logits(self) -> torch.Tensor:
        return self.logits_t.mean(0)

    @property
    def rates(self) -> dict:
        """Per-layer firing rates (B, ...)."""
        return {k: s.mean(0) for k, s in self.spikes.items()}


INIT_GAIN = 3.0  # torch's default init x 3: about 10-20% of neurons fire at the start


def _scale_init(model, gain=INIT_GAIN):
    """Scale the default init of every synaptic layer so that spikes reach the readout."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (QuantConv2d, QuantLinear)):
                m.weight.mul_(gain)


def _time_batched(module, x):
    """Apply a stateless module to (T, B, ...) by folding T into the batch."""
    t, b = x.shape[:2]
    y = module(x.reshape(t * b, *x.shape[2:]))
    return y.reshape(t, b, *y.shape[1:])


class SequenceOps:
    """A student's dataflow on sequences (T, B, ...): synapses on all steps at once, each
    neuron layer step by step (LoihiCUBA.run) on the sum of its inputs; spikes recorded by name."""

    def __init__(self, spikes=None):
        self.spikes = {} if spikes is None else spikes

    def synapse(self, name, layer, x):
        return _time_batched(layer, x)

    def neuron(self, name, layer, inputs):
        self.spikes[name] = layer.run(sum_inputs(inputs))
        return self.spikes[name]

    def flatten(self, name, x):
        return x.flatten(2)

    def readout(self, name, layer, x):
        return _time_batched(layer, x)


def sum_inputs(inputs):
    """Input currents summed in declaration order (the order fixes float rounding)."""
    total = inputs[0]
    for x in inputs[1:]:
        total = total + x
    return total


def run_dataflow(model, x) -> StudentOutput:
    """model.dataflow on (T, B, ...) input -> StudentOutput (features['last'] = the spikes of
    model.feature_layer, the spatial stage SAMD and feature KD use)."""
    ops = SequenceOps()
    logits_t = model.dataflow(x, ops)
    return StudentOutput(logits_t=logits_t, spikes=ops.spikes,
                         features={"last": ops.spikes[model.feature_layer]})


class SpikingCNN(nn.Module):
    """conv -> LIF (x len(channels)) -> flatten -> [linear -> LIF] -> linear integrator readout.

    Strided convolutions replace pooling (netx cannot run pooling layers).
    """

    def __init__(self, in_shape=(1, 28, 28), num_classes=10, channels=(16, 32), kernels=(5, 3),
                 strides=(2, 2), hidden=(128,), alpha=0.5, beta=0.75, threshold=1.0,
                 weight_step=1 / 64):
        super().__init__()
        self.config = dict(in_shape=tuple(in_shape), num_classes=num_classes,
                           channels=tuple(channels), kernels=tuple(kernels),
                           strides=tuple(strides), hidden=tuple(hidden), alpha=alpha, beta=beta,
                           threshold=threshold, weight_step=weight_step)
        neuron = dict(alpha=alpha, beta=beta, threshold=threshold, weight_step=weight_step)
        layers, names = [], []
        c, h, w = in_shape
        for i, (cout, k, s) in enumerate(zip(channels, kernels, strides), start=1):
            layers += [QuantConv2d(c, cout, k, stride=s, padding=k // 2, weight_step=weight_step),
                       LoihiCUBA((cout, 1, 1), **neuron)]
            names += [f"conv{i}", f"lif{i}"]
            c, h, w = cout, (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
        layers.append(nn.Flatten())
        names.append("flatten")
        n = c * h * w
        for j, width in enumerate(hidden, start=len(channels) + 1):
            layers += [QuantLinear(n, width, weight_step=weight_step),
                       LoihiCUBA((width,), **neuron)]
            names += [f"fc{j}", f"lif{j}"]
            n = width
        layers.append(QuantLinear(n, num_classes, weight_step=weight_step))
        names.append("readout")
        self.layers = nn.ModuleDict(zip(names, layers))
        self.last_conv_neuron = f"lif{len(channels)}"  # spatial stage used by SAMD / feature KD
        _scale_init(self)

    @property
    def feature_layer(self) -> str:
        return self.last_conv_neuron

    def dataflow(self, x, ops):
        """self.layers in order; the last one is the readout."""
        items = list(self.layers.items())
        for name, layer in items[:-1]:
            if isinstance(layer, LoihiCUBA):
                x = ops.neuron(name, layer, [x])
            elif isinstance(layer, nn.Flatten):
                x = ops.flatten(name, x)
            else:
                x = ops.synapse(name, layer, x)
        return ops.readout(*items[-1], x)

    def forward(self, x) -> StudentOutput:
        return run_dataflow(self, x)


class SpikingBlock(nn.Module):
    """Residual block with a membrane shortcut (Loihi-native: two synaptic inputs, no spike adds).

        s1[t]    = LIF_a( conv_a(s_in)[t] )                    conv_a: 3x3, the block's stride
        s_out[t] = LIF_b( conv_b(s1)[t] + shortcut(s_in)[t] )   conv_b: 3x3, stride 1
        shortcut(s) = s                 identity: weight 1.0 = 1 / weight_step integer steps
                    | W_1x1 * s         1x1 QuantConv2d with the block's stride, when the
                                        channels or the size change

    with LIF = LoihiCUBA (train/neurons.py): the sum is lif_b's synaptic input x[t], so
    I[t] = alpha I[t-1] + conv_b(s1)[t] + shortcut(s_in)[t].

    i.e. the shortcut is a second synaptic connection into lif_b's input current (on Loihi: a
    second Dense/Conv process into the same LIF process), never an addition of spikes. Both
    currents enter lif_b in the same step, as in NIR; deploy.compile aligns Lava's per-connection
    delays with relay groups. The identity's integer weight 1 / weight_step must fit int8.
    """

    def __init__(self, cin, cout, stride, neuron, weight_step):
        super().__init__()
        self.conv_a = QuantConv2d(cin, cout, 3, stride, 1, weight_step)
        self.lif_a = LoihiCUBA((cout, 1, 1), **neuron)
        self.conv_b = QuantConv2d(cout, cout, 3, 1, 1, weight_step)
        self.shortcut = (QuantConv2d(cin, cout, 1, stride, 0, weight_step)
                         if stride != 1 or cin != cout else None)
        if self.shortcut is None:
            identity_int(weight_step)
        self.lif_b = LoihiCUBA((cout, 1, 1), **neuron)

    def dataflow(self, x, ops, prefix):
        s1 = ops.neuron(f"{prefix}.lif_a", self.lif_a,
                        [ops.synapse(f"{prefix}.conv_a", self.conv_a, x)])
        short = x if self.shortcut is None else ops.synapse(f"{prefix}.shortcut", self.shortcut, x)
        return ops.neuron(f"{prefix}.lif_b", self.lif_b,
                          [ops.synapse(f"{prefix}.conv_b", self.conv_b, s1), short])

    def forward(self, x, spikes, prefix):
        """Run on (T, B, ...); spikes[prefix.lif_a / prefix.lif_b] are recorded."""
        return self.dataflow(x, SequenceOps(spikes), prefix)


def identity_int(weight_step) -> int:
    """The identity shortcut's integer weight k = 1 / weight_step (k * weight_step = 1 exactly);
    ValueError unless k is an integer that fits int8."""
    k = round(1 / weight_step)
    if abs(k * weight_step - 1) > 1e-9 or not 1 <= k <= WEIGHT_MAX:
        raise ValueError(f"weight_step {weight_step}: the identity shortcut needs 1 / weight_step "
                         f"to be an integer in [1, {WEIGHT_MAX}] (an int8 weight of 1.0)")
    return k


def conv_size(n, k, s, p) -> int:
    return (n + 2 * p - k) // s + 1


class SpikingResNet(nn.Module):
    """ResNet-style student: stem conv -> LIF -> residual blocks (SpikingBlock) -> strided conv
    head -> LIF -> flatten -> integrator readout. Stage i > 0 starts with a stride-2 block;
    `stem_stride` 2 halves the input first (28x28 inputs: 14 -> 7 -> head 4)."""

    def __init__(self, in_shape=(3, 32, 32), num_classes=10, widths=(64, 128, 256),
                 blocks=(1, 1, 1), alpha=0.5, beta=0.75, threshold=1.0, weight_step=1 / 64,
                 stem_stride=1):
        super().__init__()
        self.config = dict(in_shape=tuple(in_shape), num_classes=num_classes, widths=tuple(widths),
                           blocks=tuple(blocks), alpha=alpha, beta=beta, threshold=threshold,
                           weight_step=weight_step, stem_stride=stem_stride)
        if len(widths) != len(blocks) or not widths or min(blocks) < 1:
            raise ValueError(f"widths {tuple(widths)} and blocks {tuple(blocks)}: one width and "
                             f"at least one block per stage")
        neuron = dict(alpha=alpha, beta=beta, threshold=threshold, weight_step=weight_step)
        c, h, w = in_shape
        self.stem = QuantConv2d(c, widths[0], 3, stem_stride, 1, weight_step)
        self.stem_lif = LoihiCUBA((widths[0], 1, 1), **neuron)
        h, w = conv_size(h, 3, stem_stride, 1), conv_size(w, 3, stem_stride, 1)
        stages, cin = [], widths[0]
        for i, (width, nblocks) in enumerate(zip(widths, blocks)):
            for j in range(nblocks):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(SpikingBlock(cin, width, stride, neuron, weight_step))
                h, w = conv_size(h, 3, stride, 1), conv_size(w, 3, stride, 1)
                cin = width
        self.blocks = nn.ModuleList(stages)
        self.head = QuantConv2d(cin, cin, 3, 2, 1, weight_step)
        self.head_lif = LoihiCUBA((cin, 1, 1), **neuron)
        h, w = conv_size(h, 3, 2, 1), conv_size(w, 3, 2, 1)
        self.readout = QuantLinear(cin * h * w, num_classes, weight_step)
        _scale_init(self)

    @property
    def feature_layer(self) -> str:
        return f"blocks.{len(self.blocks) - 1}.lif_b"

    def dataflow(self, x, ops):
        x = ops.neuron("stem_lif", self.stem_lif, [ops.synapse("stem", self.stem, x)])
        for i, block in enumerate(self.blocks):
            x = block.dataflow(x, ops, f"blocks.{i}")
        x = ops.neuron("head_lif", self.head_lif, [ops.synapse("head", self.head, x)])
        return ops.readout("readout", self.readout, ops.flatten("flatten", x))

    def forward(self, x) -> StudentOutput:
        return run_dataflow(self, x)


class SmallCNN(nn.Module):
    """ANN teacher for 28x28 / 8x8 inputs: 3 stages of 2 x (conv-BN-ReLU), global average pool, fc.

    The fc after global pooling gives the class activation map SAMD needs.
    """

    def __init__(self, in_shape=(1, 28, 28), num_classes=10, channels=(32, 64, 128)):
        super().__init__()
        self.config = dict(in_shape=tuple(in_shape), num_classes=num_classes,
                           channels=tuple(channels))
        c = in_shape[0]
        stages = []
        for i, cout in enumerate(channels):
            stages.append(nn.Sequential(
                nn.Conv2d(c, cout, 3, 1 if i == 0 else 2, 1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)))
            c = cout
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x, return_features=False):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        logits = self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return (logits, feats) if return_features else logits


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNet19(nn.Module):
    """ResNet-19 teacher (CIFAR), as used by CKDSNN: stem 128, stages [3, 3, 2] x [128, 256, 512]."""

    def __init__(self, in_shape=(3, 32, 32), num_classes=10, widths=(128, 256, 512),
                 blocks=(3, 3, 2)):
        super().__init__()
        self.config = dict(in_shape=tuple(in_shape), num_classes=num_classes,
                           widths=tuple(widths), blocks=tuple(blocks))
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            layers = [BasicBlock(cin if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1)
                      for j in range(n)]
            stages.append(nn.Sequential(*layers))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x, return_features=False):
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        logits = self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return (logits, feats) if return_features else logits


ARCHS = {"scnn": SpikingCNN, "sresnet": SpikingResNet, "smallcnn": SmallCNN, "resnet19": ResNet19}


def build_model(arch: dict) -> nn.Module:
    """Rebuild a model from {'name': ..., 'config': {...}} as stored in checkpoints."""
    name = arch.get("name")
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(ARCHS)})")
    return ARCHS[name](**arch.get("config", {}))


def arch_of(model: nn.Module) -> dict:
    name = {cls: n for n, cls in ARCHS.items()}[type(model)]
    return {"name": name, "config": dict(model.config)}


# The seed papers' ResNets as Loihi-native students (SpikingResNet configs, saved as 'sresnet';
# 'resnet19' in ARCHS is the ANN teacher). What differs from the papers: docs/students.md.
PAPER_STUDENTS = {
    "resnet19": dict(widths=(128, 256, 512), blocks=(3, 3, 2)),         # CKDSNN's ResNet-19
    "resnet18": dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),  # TSER's / ESD's ResNet-18
}
STUDENTS = ("scnn", "sresnet", *PAPER_STUDENTS)


def default_arch(dataset_info, student: bool, name=None) -> dict:
    """Default teacher / student for a dataset (see train.data.DatasetInfo).

    `name` picks the student architecture (one of STUDENTS); None takes the dataset's default
    (scnn up to 28 px, sresnet above). 'resnet19' / 'resnet18' are sresnet configs with the
    seed papers' widths and blocks (stem stride 1 at any input size)."""
    shape, k = tuple(dataset_info.in_shape), dataset_info.num_classes
    small = shape[1] <= 28
    if student:
        if name not in (None, *STUDENTS):
            raise ValueError(f"unknown student {name!r} (choose from {', '.join(STUDENTS)})")
        name = name or ("scnn" if small else "sresnet")
        if name == "scnn":
            cfg = dict(in_shape=shape, num_classes=k)
            if shape[1] <= 8:
                cfg.update(channels=(16, 32), kernels=(3, 3), strides=(1, 2))
            return {"name": "scnn", "config": cfg}
        cfg = dict(in_shape=shape, num_classes=k)
        if name in PAPER_STUDENTS:
            cfg.update(PAPER_STUDENTS[name])
        elif small:  # a narrow ResNet: mnist5k 97.3 % after the default 15 epochs, ~5 min, 2 cores
            cfg.update(widths=(16, 32), blocks=(1, 1), stem_stride=2)
        return {"name": "sresnet", "config": cfg}
    return {"name": "smallcnn" if small else "resnet19",
            "config": dict(in_shape=shape, num_classes=k)}

"""Synaptic layers whose weights live on the 8-bit grid Loihi stores (QAT with a float shadow)."""
import torch
from torch import nn
from torch.nn import functional as F

from .quant import quantize_weight, weight_steps, weight_to_int


class QuantMixin:
    """Float shadow weights; the forward pass and the exporter see `step * k`, k an int8."""

    weight_step: float

    def quantized_weight(self) -> torch.Tensor:
        return quantize_weight(self.weight, self.weight_step)

    def int_weight(self) -> torch.Tensor:
        return weight_to_int(self.weight.detach(), self.weight_step)

    def step_weight(self) -> torch.Tensor:
        """k = the quantised weight in weight steps (integer-valued float, STE): a layer run with
        it gives its input current in weight steps, exact in float32 for binary input (sums of
        integers below 2^24) whatever the step."""
        return weight_steps(self.weight, self.weight_step)

    def forward(self, x):
        return self.with_weight(x, self.quantized_weight())

    def forward_steps(self, x):
        """The input current in weight steps (`step_weight`)."""
        return self.with_weight(x, self.step_weight())


class QuantConv2d(QuantMixin, nn.Conv2d):
    """Conv2d without bias whose weights are `step * k`, k an int8 (Loihi has no synaptic bias)."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0, weight_step=1 / 64,
                 dilation=1, groups=1):
        super().__init__(cin, cout, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=False)
        self.weight_step = float(weight_step)

    def with_weight(self, x, w):
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


class QuantLinear(QuantMixin, nn.Linear):
    """Linear without bias whose weights are `step * k`, k an int8."""

    def __init__(self, fin, fout, weight_step=1 / 64):
        super().__init__(fin, fout, bias=False)
        self.weight_step = float(weight_step)

    def with_weight(self, x, w):
        return F.linear(x, w)

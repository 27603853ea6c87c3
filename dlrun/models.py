"""The networks dlrun trains. Each takes the dataset's `in_shape` (C, H, W) and `num_classes`,
so a config never hard-codes a flatten size; a user's own `model._target_` gets the same two."""

import logging
from typing import Callable, Sequence

import torch
from torch import nn

from dlrun.errors import ConfigError

log = logging.getLogger(__name__)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


def make_activation(name: str, key: str = "model.activation") -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(key, name, f"must be one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _flat_size(in_shape: Sequence[int]) -> int:
    size = 1
    for d in in_shape:
        size *= int(d)
    return size


class LogisticRegression(nn.Module):
    """Softmax regression: the softmax lives in the cross-entropy loss."""

    def __init__(self, in_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.linear = nn.Linear(_flat_size(in_shape), num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Fully connected layers from a list of hidden sizes, as the course's ModuleList net."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (100,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        sizes = [_flat_size(in_shape), *[int(h) for h in hidden_sizes]]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            layers.append(nn.Linear(n_in, n_out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x.flatten(1))


class CNN(nn.Module):
    """Conv blocks, each conv -> [batch norm] -> activation -> max-pool -> [dropout], then a linear head."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        batch_norm: bool = True,
        dropout: float = 0.0,
        activation: str = "relu",
        head_hidden: int = 128,
    ):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = int(in_shape[0])
        for c_out in channels:
            blocks.append(nn.Conv2d(c_in, int(c_out), kernel_size, padding=kernel_size // 2, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm2d(int(c_out)))
            blocks.append(make_activation(activation))
            blocks.append(nn.MaxPool2d(2, ceil_mode=True))
            if dropout > 0:
                blocks.append(nn.Dropout2d(dropout))
            c_in = int(c_out)
        self.features = nn.Sequential(*blocks)
        # A dry forward pass gives the flatten size for any image shape.
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, *in_shape)).flatten(1).shape[1]
        head: list[nn.Module] = [nn.Flatten()]
        if head_hidden:
            head += [nn.Linear(n_flat, head_hidden), make_activation(activation)]
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            n_flat = head_hidden
        head.append(nn.Linear(n_flat, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.features(x))


def initialize(model: nn.Module, fn: Callable | None, zero_bias: bool) -> list[str]:
    """Apply an init function to the weight of every Linear and Conv layer; return where it went."""
    if fn is None:
        return []
    applied = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            fn(module.weight)
            if zero_bias and module.bias is not None:
                nn.init.zeros_(module.bias)
            applied.append(name)
    return applied


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable

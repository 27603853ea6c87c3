"""The networks dlrun trains. Each takes the dataset's `in_shape` (C, H, W) and `num_classes`,
so a config never hard-codes a flatten size; a user's own `model._target_` gets the same two (with
num_classes=1 for a regression, or for a binary head, which dlrun's own models take as `binary_head`)."""

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from omegaconf import ListConfig
from torch import nn

from dlrun.core.errors import ConfigError
from dlrun.core.text import did_you_mean

log = logging.getLogger(__name__)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def make_activation(name: str, key: str = "model.activation") -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(key, name, f"must be one of {', '.join(ACTIVATIONS)}{did_you_mean(name, ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _flat_size(in_shape: Sequence[int]) -> int:
    size = 1
    for d in in_shape:
        size *= int(d)
    return size


def head_size(num_classes: int, binary_head: bool) -> int:
    """The last layer's outputs: one per class, or one logit for a two-class binary head (sigmoid(z) = P(class 1))."""
    if not binary_head:
        return num_classes
    if num_classes != 2:
        raise ConfigError("model.binary_head", "true", f"is for two classes; the dataset has {num_classes}")
    return 1


def image_shape(in_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ConfigError(
            "model",
            model,
            f"needs images (C, H, W), but the dataset's inputs have shape {tuple(in_shape)}; use model=mlp or model=logistic",
        )
    return tuple(int(d) for d in in_shape)


class LogisticRegression(nn.Module):
    """Softmax regression: the softmax lives in the cross-entropy loss."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, binary_head: bool = False):
        super().__init__()
        self.in_shape = tuple(int(d) for d in in_shape)
        self.linear = nn.Linear(_flat_size(in_shape), head_size(num_classes, binary_head))

    def forward(self, x):
        return self.linear(x.flatten(1))

    def weight_images(self) -> torch.Tensor | None:
        """Each class's weight vector in the input's image shape (K, C, H, W): the course's digit templates."""
        if len(self.in_shape) != 3 or self.in_shape[0] not in (1, 3):
            return None
        return self.linear.weight.detach().view(-1, *self.in_shape)


class MLP(nn.Module):
    """The course's fully connected net from a list of hidden sizes: 784-100-10 is hidden_sizes=[100] on MNIST.

    Each hidden layer is Linear -> [BatchNorm1d] -> activation -> [Dropout], the order the course uses."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (100,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        binary_head: bool = False,
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
        layers.append(nn.Linear(sizes[-1], head_size(num_classes, binary_head)))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x.flatten(1))


def _per_block(value, n: int, key: str) -> list:
    """One value for every block, or a list with one entry per block."""
    if isinstance(value, (list, tuple, ListConfig)):
        values = list(value)
        if len(values) != n:
            raise ConfigError(key, values, f"must be one value or a list of {n}, one per block in model.channels")
        return values
    return [value] * n


POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "none": None}


class CNN(nn.Module):
    """Conv blocks, each conv -> [batch norm] -> activation -> [pool] -> [dropout], then a linear head.

    kernel_size, stride, padding, pooling, batch_norm, dropout and activation take one value for all blocks
    or a list with one entry per block. first_kernel_size, when set, replaces the first block's where kernel_size is
    one value (a list says every block's): a wider view
    of the raw pixels, cheap where there are few input channels. The head's input size comes from a dry forward pass."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        kernel_size: int | Sequence[int] = 3,
        first_kernel_size: int | None = None,
        stride: int | Sequence[int] = 1,
        padding: int | None | Sequence[int | None] = None,
        pooling: str | Sequence[str] = "max",
        pool_size: int | Sequence[int] = 2,
        batch_norm: bool | Sequence[bool] = True,
        dropout: float | Sequence[float] = 0.0,
        activation: str | Sequence[str] = "relu",
        head_hidden: int = 128,
        binary_head: bool = False,
    ):
        super().__init__()
        in_shape = image_shape(in_shape, "cnn")
        per = {
            key: _per_block(value, len(channels), f"model.{key}")
            for key, value in dict(
                kernel_size=kernel_size,
                stride=stride,
                padding=padding,
                pooling=pooling,
                pool_size=pool_size,
                batch_norm=batch_norm,
                dropout=dropout,
                activation=activation,
            ).items()
        }
        if first_kernel_size and isinstance(kernel_size, int):  # a list names every block's kernel, the first's too
            per["kernel_size"] = [first_kernel_size, *per["kernel_size"][1:]]
        blocks, c_in = [], in_shape[0]
        for i, c_out in enumerate(int(c) for c in channels):
            k, bn, pool = int(per["kernel_size"][i]), bool(per["batch_norm"][i]), per["pooling"][i]
            pad = k // 2 if per["padding"][i] is None else int(per["padding"][i])
            block = [nn.Conv2d(c_in, c_out, k, stride=int(per["stride"][i]), padding=pad, bias=not bn)]
            if bn:
                block.append(nn.BatchNorm2d(c_out))
            block.append(make_activation(per["activation"][i]))
            if pool not in POOLS:
                raise ConfigError("model.pooling", pool, f"must be one of {', '.join(POOLS)}")
            if POOLS[pool] is not None:
                block.append(POOLS[pool](int(per["pool_size"][i]), ceil_mode=True))
            if per["dropout"][i] > 0:
                block.append(nn.Dropout2d(per["dropout"][i]))
            blocks.append(nn.Sequential(*block))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        n_flat = self._dry_run(in_shape, [int(c) for c in channels])
        head: list[nn.Module] = [nn.Flatten()]
        if head_hidden:
            head += [nn.Linear(n_flat, head_hidden), make_activation(per["activation"][-1])]
            if per["dropout"][-1] > 0:
                head.append(nn.Dropout(per["dropout"][-1]))
            n_flat = head_hidden
        head.append(nn.Linear(n_flat, head_size(num_classes, binary_head)))
        self.head = nn.Sequential(*head)

    def _dry_run(self, in_shape, channels: list[int]) -> int:
        """The flatten size for this image shape, or one line naming the block that shrinks the map to nothing."""
        x = torch.zeros(1, *in_shape)
        for i, block in enumerate(self.features, start=1):
            reason = ""
            try:
                with torch.no_grad():
                    x = block.eval()(x)  # eval: batch norm cannot train on one sample
            except RuntimeError as err:
                reason = f" ({str(err).splitlines()[0]})"
            block.train()
            if reason or x.numel() == 0:
                raise ConfigError(
                    "model.channels",
                    channels,
                    f"the feature map of a {in_shape[1]}x{in_shape[2]} input "
                    f"shrinks to nothing in block {i}{reason}; use fewer blocks, stride 1, padding "
                    "or model.pooling=none",
                )
        return x.flatten(1).shape[1]

    def forward(self, x):
        return self.head(self.features(x))


class LeNet5(nn.Module):
    """LeCun et al. (1998) on 32x32 inputs: conv 6@5x5, pool, conv 16@5x5, pool, then 120, 84 and the classes.

    28x28 to 32x32 inputs are zero-padded in the first conv (the usual MNIST recipe); other sizes are
    resized to 32x32 on the device, batch by batch."""

    def __init__(
        self, in_shape: Sequence[int], num_classes: int, activation: str = "tanh", pooling: str = "avg", binary_head: bool = False
    ):
        super().__init__()
        c, h, w = image_shape(in_shape, "lenet5")
        fits = h == w and 28 <= h <= 32 and (32 - h) % 2 == 0
        self.resize = None if fits else 32
        if pooling not in ("max", "avg"):
            raise ConfigError("model.pooling", pooling, "must be max or avg")
        pool = POOLS[pooling]
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=(32 - h) // 2 if fits else 0),
            make_activation(activation),
            pool(2),
            nn.Conv2d(6, 16, 5),
            make_activation(activation),
            pool(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            make_activation(activation),
            nn.Linear(120, 84),
            make_activation(activation),
            nn.Linear(84, head_size(num_classes, binary_head)),
        )

    def forward(self, x):
        if self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return self.classifier(self.features(x))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable

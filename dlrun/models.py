"""The networks dlrun trains. Each takes the dataset's `in_shape` (C, H, W) and `num_classes`,
so a config never hard-codes a flatten size; a user's own `model._target_` gets the same two."""

import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from omegaconf import ListConfig
from torch import nn

from dlrun.errors import ConfigError, DlrunError

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
        raise ConfigError(key, name, f"must be one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _flat_size(in_shape: Sequence[int]) -> int:
    size = 1
    for d in in_shape:
        size *= int(d)
    return size


def _image_shape(in_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ConfigError("model", model, "needs images (C, H, W), but the dataset's inputs have shape "
                          f"{tuple(in_shape)}; use model=mlp or model=logistic")
    return tuple(int(d) for d in in_shape)


class LogisticRegression(nn.Module):
    """Softmax regression: the softmax lives in the cross-entropy loss."""

    def __init__(self, in_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.in_shape = tuple(int(d) for d in in_shape)
        self.linear = nn.Linear(_flat_size(in_shape), num_classes)

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
    or a list with one entry per block. The head's input size comes from a dry forward pass."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | None | Sequence[int | None] = None,
        pooling: str | Sequence[str] = "max",
        pool_size: int | Sequence[int] = 2,
        batch_norm: bool | Sequence[bool] = True,
        dropout: float | Sequence[float] = 0.0,
        activation: str | Sequence[str] = "relu",
        head_hidden: int = 128,
    ):
        super().__init__()
        in_shape = _image_shape(in_shape, "cnn")
        n = len(channels)
        per = {key: _per_block(value, n, f"model.{key}") for key, value in dict(
            kernel_size=kernel_size, stride=stride, padding=padding, pooling=pooling, pool_size=pool_size,
            batch_norm=batch_norm, dropout=dropout, activation=activation).items()}
        blocks: list[nn.Module] = []
        c_in = in_shape[0]
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
        head.append(nn.Linear(n_flat, num_classes))
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
                raise ConfigError("model.channels", channels, f"the feature map of a {in_shape[1]}x{in_shape[2]} input "
                                  f"shrinks to nothing in block {i}{reason}; use fewer blocks, stride 1, padding "
                                  "or model.pooling=none")
        return x.flatten(1).shape[1]

    def forward(self, x):
        return self.head(self.features(x))


class LeNet5(nn.Module):
    """LeCun et al. (1998) on 32x32 inputs: conv 6@5x5, pool, conv 16@5x5, pool, then 120, 84 and the classes.

    28x28 to 32x32 inputs are zero-padded in the first conv (the usual MNIST recipe); other sizes are
    resized to 32x32 on the device, batch by batch."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, activation: str = "tanh", pooling: str = "avg"):
        super().__init__()
        c, h, w = _image_shape(in_shape, "lenet5")
        fits = h == w and 28 <= h <= 32 and (32 - h) % 2 == 0
        self.resize = None if fits else 32
        if pooling not in ("max", "avg"):
            raise ConfigError("model.pooling", pooling, "must be max or avg")
        pool = POOLS[pooling]
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=(32 - h) // 2 if fits else 0), make_activation(activation), pool(2),
            nn.Conv2d(6, 16, 5), make_activation(activation), pool(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), make_activation(activation),
            nn.Linear(120, 84), make_activation(activation),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        if self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return self.classifier(self.features(x))


IMAGENET_CLASSES = 1000


class TorchvisionModel(nn.Module):
    """Any torchvision classification model by name, with its head replaced for the dataset's classes.

    weights: none, default (torchvision's pretrained weights, downloaded once into the torch hub cache) or
    the path of a local state-dict file for the original architecture. Grey (1-channel) images are repeated
    into RGB; `resize` resizes each batch on the device, e.g. 224 to match ImageNet pretraining."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        name: str = "resnet18",
        weights: str | None = "none",
        freeze_backbone: bool = False,
        resize: int | None = None,
    ):
        super().__init__()
        from torchvision import models

        c, h, w = _image_shape(in_shape, name)
        if c not in (1, 3):
            raise ConfigError("model", name, f"takes 1- or 3-channel images; the dataset's have {c} channels")
        known = models.list_models(module=models)
        if name not in known:
            from dlrun.cli import did_you_mean

            raise ConfigError("model.name", name, f"must be a torchvision classification model{did_you_mean(name, known)}"
                              " (e.g. resnet18, resnet34, mobilenet_v3_small, efficientnet_b0)")
        self.name, self.weights, self.resize, self.grey = name, str(weights), resize, c == 1
        self.pretrained = self.weights.lower() not in ("none", "null")
        # googlenet and inception_v3 return auxiliary logits in training unless told not to.
        extra = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
        if self.weights.lower() == "default":
            self.net = models.get_model(name, weights=_default_weights(name), **extra)
        else:
            self.net = models.get_model(name, weights=None, **extra)
            if self.pretrained:
                _load_weights_file(self.net, self.weights, name)
        self.head_path = _replace_head(self.net, num_classes, name)
        self.frozen = bool(freeze_backbone)
        if self.frozen:
            head_params = {id(p) for p in self.head.parameters()}
            for p in self.net.parameters():
                p.requires_grad_(id(p) in head_params)
        self._check_input_size(c, h, w)

    @property
    def head(self) -> nn.Module:
        return self.net.get_submodule(self.head_path)

    def fresh_modules(self) -> nn.Module:
        """Where an initializer may write: the new head only, when the backbone holds loaded weights."""
        return self.head if self.pretrained else self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            # A frozen backbone keeps its batch-norm statistics too, not only its weights.
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x):
        if self.grey:
            x = x.expand(-1, 3, -1, -1)
        if self.resize:
            x = F.interpolate(x, size=(int(self.resize), int(self.resize)), mode="bilinear", align_corners=False)
        return self.net(x)

    def extra_repr(self) -> str:
        return (f"name={self.name}, weights={self.weights}, freeze_backbone={self.frozen}, resize={self.resize}"
                f"{', grey repeated to RGB' if self.grey else ''}")

    def _check_input_size(self, c: int, h: int, w: int) -> None:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self(torch.zeros(1, c, h, w))
        except Exception as err:  # torchvision raises RuntimeError or AssertionError on sizes it cannot take
            size = f"{self.resize}x{self.resize}" if self.resize else f"{h}x{w}"
            raise ConfigError("model.resize", self.resize or "null", f"{self.name} cannot take {size} images "
                              f"({str(err).splitlines()[0]}); set model.resize to a size it takes, e.g. 224") from err
        finally:
            self.train(was_training)


def _default_weights(name: str):
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    try:
        weights.get_state_dict(progress=True)  # fills the torch hub cache, or finds the file already there
    except Exception as err:
        filename = weights.url.rsplit("/", 1)[-1]
        raise DlrunError(
            f"model.weights=default: cannot download {name}'s pretrained weights ({str(err).splitlines()[0]}); "
            f"offline, fetch {weights.url} elsewhere and pass model.weights=/path/to/{filename}, or place it in "
            f"{torch.hub.get_dir()}/checkpoints/"
        ) from err
    return weights


def _load_weights_file(net: nn.Module, path: str, name: str) -> None:
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("model.weights", path, "must be none, default, or the path of an existing weights file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as err:
        raise ConfigError("model.weights", path, f"is not a state dict of torchvision's {name} "
                          f"({str(err).splitlines()[0].strip()})") from err


def _replace_head(net: nn.Module, num_classes: int, name: str) -> str:
    """Swap the last layer with ImageNet's 1000 outputs (a Linear, or squeezenet's 1x1 conv) for a new one."""
    found = None
    for path, module in net.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == IMAGENET_CLASSES:
            found = path, nn.Linear(module.in_features, num_classes)
        elif isinstance(module, nn.Conv2d) and module.out_channels == IMAGENET_CLASSES:
            found = path, nn.Conv2d(module.in_channels, num_classes, module.kernel_size)
    if found is None:
        raise ConfigError("model.name", name, "has no classification layer with 1000 outputs to replace")
    path, head = found
    parent_path, _, attr = path.rpartition(".")
    setattr(net.get_submodule(parent_path) if parent_path else net, attr, head)
    return path


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable

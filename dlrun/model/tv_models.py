"""Any torchvision classification model by name, its head replaced for the dataset's classes."""

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.text import did_you_mean
from dlrun.model.nets import head_size, image_shape

log = logging.getLogger(__name__)

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
        binary_head: bool = False,
    ):
        super().__init__()
        from torchvision import models  # here: torchvision's import pulls in torch._dynamo, a second on every run

        c, h, w = image_shape(in_shape, name)
        if c not in (1, 3):
            raise ConfigError("model", name, f"takes 1- or 3-channel images; the dataset's have {c} channels")
        known = models.list_models(module=models)
        if name not in known:
            raise ConfigError(
                "model.name",
                name,
                f"must be a torchvision classification model{did_you_mean(name, known)}"
                " (e.g. resnet18, resnet34, mobilenet_v3_small, efficientnet_b0)",
            )
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
        self.head_path = _replace_head(self.net, head_size(num_classes, binary_head), name)
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
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
                    m.eval()
        return self

    def forward(self, x):
        if self.grey:
            x = x.expand(-1, 3, -1, -1)
        if self.resize:
            x = F.interpolate(x, size=(int(self.resize), int(self.resize)), mode="bilinear", align_corners=False)
        return self.net(x)

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, weights={self.weights}, freeze_backbone={self.frozen}, resize={self.resize}"
            f"{', grey repeated to RGB' if self.grey else ''}"
        )

    def _check_input_size(self, c: int, h: int, w: int) -> None:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self(torch.zeros(1, c, h, w))
        except Exception as err:  # torchvision raises RuntimeError or AssertionError on sizes it cannot take
            size = f"{self.resize}x{self.resize}" if self.resize else f"{h}x{w}"
            raise ConfigError(
                "model.resize",
                self.resize or "null",
                f"{self.name} cannot take {size} images "
                f"({str(err).splitlines()[0]}); set model.resize to a size it takes, e.g. 224",
            ) from err
        finally:
            self.train(was_training)


def _default_weights(name: str):
    from torchvision import models

    weights = models.get_model_weights(name).DEFAULT
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
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("model.weights", path, "must be none, default, or the path of an existing weights file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as err:
        raise ConfigError(
            "model.weights", path, f"is not a state dict of torchvision's {name} ({str(err).splitlines()[0].strip()})"
        ) from err


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

"""Augmentation of a whole batch at once, on the device that trains: every sample draws its own
crop offset, flip, angle and shift, but no Python runs per sample.

Images arrive as floats in [0, 1] (N, C, H, W), before normalisation, so the zeros that crop
padding and rotation bring in are black, as with torchvision's RandomCrop and RandomAffine."""

import math

import torch
import torch.nn.functional as F

from dlrun.config.check import check_rules
from dlrun.config.schema import AUGMENT
from dlrun.core.errors import ConfigError


class BatchAugment:
    def __init__(self, crop_padding: int = 0, hflip: bool = False, rotate: float = 0.0, translate: float = 0.0):
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        self.rotate = float(rotate)
        self.translate = float(translate)

    @classmethod
    def from_config(cls, cfg) -> "BatchAugment | None":
        """The `dataset.augment` block, checked; None when every option is off."""
        if not cfg:
            return None
        options = dict(cfg)
        for key in options:
            if key not in AUGMENT:
                raise ConfigError(f"dataset.augment.{key}", options[key], f"no such option; options: {', '.join(AUGMENT)}")
        check_rules({"dataset": {"augment": options}}, {f"dataset.augment.{k}": rule for k, rule in AUGMENT.items()})
        padding, rotate, translate = options.get("crop_padding", 0), options.get("rotate", 0.0), options.get("translate", 0.0)
        aug = cls(padding, bool(options.get("hflip", False)), rotate, translate)
        return aug if aug.active else None

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.hflip or self.rotate or self.translate)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if self.hflip:
            flip = torch.rand(len(x), device=x.device, generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if self.rotate or self.translate:
            x = random_affine(x, self.rotate, self.translate, generator)
        return x


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` on every side, then cut each sample's H x W window at its own offset."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    samples = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[samples, channels, rows, cols]


def random_affine(x: torch.Tensor, degrees: float, translate: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate each sample by an angle in [-degrees, degrees] and shift it by up to `translate` of its size."""
    n = len(x)
    uniform = lambda: torch.rand(n, device=x.device, generator=generator) * 2 - 1  # noqa: E731
    angle = uniform() * math.radians(degrees)
    # affine_grid works in coordinates where the image spans [-1, 1]: a shift of t of the size is 2t.
    tx, ty = uniform() * 2 * translate, uniform() * 2 * translate
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

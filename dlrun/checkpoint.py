"""Checkpoints: written atomically, loaded with weights_only=True so that loading never runs code."""

import io
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dlrun import distributed, report
from dlrun.errors import DlrunError

FORMAT = "dlrun-checkpoint-1"


def save(path: Path, model, optimizer, epoch: int, cfg, data) -> None:
    if not distributed.is_main():  # in a multi-process run, rank 0 alone writes (all ranks hold the same weights)
        return
    state = {
        "format": FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": OmegaConf.to_yaml(cfg),
        "classes": list(data.classes),
        "in_shape": list(data.in_shape),
        "mean": list(data.mean),
        "std": list(data.std),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    report.atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load(path: Path, map_location="cpu") -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DlrunError(f"{path}: no such checkpoint")
    except Exception as err:
        raise DlrunError(
            f"{path}: not a dlrun checkpoint, or it holds objects that could run code; refused to load it "
            f"({type(err).__name__})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DlrunError(f"{path}: not a dlrun checkpoint (no '{FORMAT}' format tag)")
    return state

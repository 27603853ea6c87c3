"""Checkpoints: written atomically, loaded with weights_only=True so that loading never runs code.

last.pt also holds what `dlrun train resume=PATH` needs to continue as if never stopped: the step,
the scheduler, early stopping, the history and every random generator's state. best.pt holds the
weights and optimizer of the best epoch only; `resume=RUN_DIR/best.pt` continues from it when last.pt
cannot be read, with the history taken from history.csv and the schedule and early stopping replayed."""

import contextlib
import copy
import csv
import io
import logging
import math
import random
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from dlrun.core import ranks
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.io import MAX_CSV_BYTES, Unreadable, atomic_write, check_size, read_json

log = logging.getLogger(__name__)

FORMAT = "dlrun-checkpoint-1"
LAST, BEST = "last.pt", "best.pt"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive, each member with its CRC-32
CRC_CHUNK = 1 << 24
# TensorBoard tags logged per optimizer step (the others are logged per epoch, at the epoch as their step),
# and those logged once the run is tested, which a run continued from best.pt logs again.
STEP_TAGS = ("train/loss_step", "train/lr", "train/grad_norm")
FINAL_TAGS = ("test/", "diagnosis/", "val/threshold", "_hparams_/session_end_info")


class Damaged(DlrunError):
    """A checkpoint whose bytes are not whole: cut short, or changed since torch.save wrote them."""


def save(path: Path, model, optimizer, epoch: int, cfg, data, **extra) -> None:
    """`cfg`: the run's config, or its YAML already made (a run makes it once: dumping it costs 20 ms a save)."""
    if not ranks.is_main():  # in a multi-process run, rank 0 alone writes (all ranks hold the same weights)
        return
    state = {
        "format": FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": cfg if isinstance(cfg, str) else OmegaConf.to_yaml(cfg),
        "classes": list(data.classes),
        "in_shape": list(data.in_shape),
        "mean": list(data.mean),
        "std": list(data.std),
        **extra,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load(path: Path, map_location="cpu", verify: bool = False) -> dict:
    """The checkpoint's state. `verify`: check every member's CRC-32 first, which finds damage that torch.load
    would not notice (changed bytes inside a tensor) at the cost of reading the file once more."""
    path = Path(path)
    if verify and (damage := damage_of(path)):
        raise Damaged(f"{path}: truncated or corrupt ({damage})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DlrunError(f"{path}: no such checkpoint") from None
    except Exception as err:
        if damage := damage_of(path):
            raise Damaged(f"{path}: truncated or corrupt ({damage})") from err
        raise DlrunError(
            f"{path}: not a dlrun checkpoint, or it holds objects that could run code; refused to load it ({type(err).__name__})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DlrunError(f"{path}: not a dlrun checkpoint (no '{FORMAT}' format tag)")
    return state


def damage_of(path: Path) -> str | None:
    """What is wrong with the bytes of a checkpoint torch.save wrote; None for a whole archive, or for a file
    that is no archive at all (someone else's pickle, which load's own message is about)."""
    try:
        if Path(path).stat().st_size == 0:
            return "an empty file"
        with open(path, "rb") as f:
            if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                return None
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.CRC:  # written without checksums (torch's compute_crc32 off): nothing to compare
                    continue
                with archive.open(info) as member:
                    while member.read(CRC_CHUNK):
                        pass
    except zipfile.BadZipFile as err:
        text = str(err)
        if text == "File is not a zip file":
            return "the end of its zip archive is missing"
        if text.startswith("Bad CRC-32"):
            member = text.split("for file", 1)[-1].strip(" '")
            return f"{member} does not match its checksum"
        return text[:1].lower() + text[1:]
    except (EOFError, zlib.error, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    except OSError:
        return None  # unreadable for another reason (permissions): load's own error says so
    return None


def rng_state(*generators: torch.Generator) -> dict:
    """Every random stream a run draws from, in types that weights_only loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, *generators: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for generator, saved in zip(generators, state["generators"]):
        generator.set_state(saved)


# ---- what last.pt adds so that a resumed run goes on exactly as an uninterrupted one ----


def training_state(step: int, history: list[dict], best: dict, schedule, stopper, generators, wall_time_s: float) -> dict:
    return {
        "step": step,
        "history": [dict(row) for row in history],
        "best": dict(best),
        "scheduler": schedule.state_dict(),
        "early_stopping": stopper.state_dict(),
        "rng": rng_state(*generators),
        "wall_time_s": wall_time_s,
    }


def load_for_resume(cfg, run_dir: Path) -> dict | None:
    """The state of the run that `resume=` names, which must be this run's directory: its last.pt, or with
    `resume=RUN_DIR/best.pt` what best.pt and history.csv give (see from_best); None for a fresh run."""
    if not cfg.get("resume"):
        return None
    run_dir, target = Path(run_dir), Path(cfg.resume)
    source = target.name if target.name in (LAST, BEST) else LAST
    folder = target.parent if target.name in (LAST, BEST) else target
    if folder.resolve() != run_dir.resolve():
        raise ConfigError(
            "resume",
            cfg.resume,
            f"continues a run in its own directory, not in {run_dir}; use `dlrun train resume=PATH`, which chooses the directory",
        )
    if source == BEST:
        with _main_first():  # the other ranks read the event files once rank 0 has rewritten them
            state = from_best(cfg, run_dir)
            if ranks.is_main() and not already_completed(state, run_dir, cfg.trainer.epochs):
                rewind_events(run_dir, state["epoch"], state["step"])
        return state
    state = load(run_dir / LAST)
    if "step" not in state:
        raise DlrunError(f"{run_dir / 'last.pt'}: written by an older dlrun without the state to resume from")
    return state


@contextlib.contextmanager
def _main_first():
    several = ranks.world_size() > 1 and dist.is_initialized()
    if several and not ranks.is_main():
        dist.barrier()
    yield
    if several and ranks.is_main():
        dist.barrier()


def best_source(run_dir: Path, verify: bool = True) -> tuple[dict, list[dict], int]:
    """best.pt as the point to continue a run from: its state, history.csv's rows up to its epoch, and the
    step count at the end of that epoch. A DlrunError names what stands in the way."""
    path = Path(run_dir) / BEST
    state = load(path, verify=verify)
    epoch = int(state.get("epoch") or 0)
    if epoch < 1:
        raise DlrunError(f"{path}: holds no finished epoch to continue from")
    history = history_until(Path(run_dir) / "history.csv", epoch)
    step = state.get("step")  # in a best.pt that records it; else counted from the event files
    if step is None:
        per_epoch = steps_per_epoch(run_dir)
        if per_epoch is None:
            raise DlrunError(f"{path}: holds no step count, and no event file of the run shows how many steps an epoch took")
        step = epoch * per_epoch
    return state, history, int(step)


def from_best(cfg, run_dir: Path) -> dict:
    """A state in last.pt's shape, from best.pt: its weights, optimizer and epoch; the history of history.csv up
    to that epoch; early stopping replayed over it (exactly what the run had: it reads only those rows); the
    lr schedule left for restore() to replay; no random streams (they start again from `seed`)."""
    state, history, step = best_source(run_dir, verify=False)  # resume_args verified it moments ago
    monitor = cfg.trainer.monitor
    if monitor not in history[-1]:
        raise DlrunError(f"{Path(run_dir) / 'history.csv'}: has no {monitor} column, which trainer.monitor names")
    from dlrun.engine.optim import EarlyStopping

    stopper, stopped = EarlyStopping(cfg.trainer.early_stopping), False
    for row in history:
        stopped = stopper.update(row)
    times = [row.get("time_s", math.nan) for row in history]
    return {
        **state,
        "source": BEST,
        "step": step,
        "history": history,
        "best": {"value": history[-1][monitor], "epoch": state["epoch"]},
        "scheduler": state.get("scheduler"),  # None: replayed
        "early_stopping": stopper.state_dict(),
        "stopped": stopped,
        "wall_time_s": math.fsum(t for t in times if math.isfinite(t)),
    }


def history_until(path: Path, epoch: int) -> list[dict]:
    """history.csv's rows of epochs 1 to `epoch`, as last.pt keeps them: the epoch an int, the rest floats."""
    rows = []
    try:
        check_size(path, MAX_CSV_BYTES)
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if len(rows) == epoch:
                    break
                rows.append({k: int(float(v)) if k == "epoch" else float(v) for k, v in row.items() if k and v != ""})
    except FileNotFoundError:
        raise DlrunError(f"{path}: missing, and best.pt alone does not say how epochs 1 to {epoch} went") from None
    except Unreadable as err:
        raise DlrunError(f"{path}: {err.reason}") from None
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as err:
        raise DlrunError(f"{path}: not a history.csv dlrun wrote ({type(err).__name__}: {err})") from None
    epochs = [row.get("epoch") for row in rows]
    if epochs != list(range(1, epoch + 1)):
        raise DlrunError(f"{path}: holds {len(rows)} rows of epochs 1 to {epoch}, which best.pt continues from")
    return rows


def steps_per_epoch(run_dir: Path) -> int | None:
    """The optimizer steps of one epoch (the same in every epoch: the loader does not change), as the event
    files show it: the last step of the step curve before epoch 1's val loss."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    seen = 0
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    if value.tag == STEP_TAGS[0]:
                        seen = max(seen, event.step)
                    elif value.tag == "val/loss" and event.step == 1 and seen:
                        return seen
        except Exception as err:  # noqa: BLE001 - a damaged event file: the next one may show it
            log.warning("%s: could not read all of it (%s)", path, err)
    return None


def rewind_events(run_dir: Path, epoch: int, step: int) -> None:
    """The run's TensorBoard files cut back to best.pt's `epoch` (and `step`), so that the epochs a run
    continued from best.pt trains again show once, with their new values: one file, holding what the old ones
    held up to there (as TensorBoard reads them: a resumed run's purge applied), replaces them. A crash between
    writing it and removing them leaves copies of the same events, which the next rewind drops."""
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    old = sorted(Path(run_dir).glob("events.out.tfevents.*"))
    if not old:
        return
    kept = _events_until(old, epoch, step)
    writer = EventFileWriter(str(run_dir))
    for event in kept:
        writer.add_event(event)
    writer.close()
    for path in old:
        path.unlink(missing_ok=True)


def _events_until(paths: list[Path], epoch: int, step: int) -> list:
    # The events as they were written (EventFileLoader would turn scalars into tensors on the way)
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader as EventFileLoader
    from tensorboard.compat.proto import event_pb2

    kept, seen = [], set()
    for path in paths:
        try:
            for event in EventFileLoader(str(path)).Load():
                if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                    kept = [e for e in kept if e.step < event.step]  # a resumed run's purge_step
                    seen = {e.SerializeToString() for e in kept}
                    continue
                if event.HasField("file_version"):
                    continue  # the new file writes its own
                if event.HasField("summary"):
                    values = [v for v in event.summary.value if _kept(v.tag, event.step, epoch, step)]
                    if not values:
                        continue
                    if len(values) < len(event.summary.value):
                        event = copy.deepcopy(event)
                        del event.summary.value[:]
                        event.summary.value.extend(values)
                key = event.SerializeToString()
                if key not in seen:
                    seen.add(key)
                    kept.append(event)
        except Exception as err:  # noqa: BLE001 - a damaged event file: keep what could be read of it
            log.warning("%s: could not read all of it (%s)", path, err)
    return kept


def _kept(tag: str, at: int, epoch: int, step: int) -> bool:
    if tag.startswith(FINAL_TAGS):
        return False
    return at <= (step if tag in STEP_TAGS else epoch)


def already_completed(state: dict, run_dir: Path, epochs: int) -> bool:
    """True when the run finished (tested and all) and `epochs` asks for no more training."""
    status = read_json(Path(run_dir) / "metrics.json").get("status")
    return status == "completed" and (state["epoch"] >= epochs or bool(state.get("stopped")))


def restore(state: dict, model, optimizer, schedule, stopper, generators, streams: bool = True) -> None:
    """Put a run back where last.pt (or best.pt) left it. `streams=False` (several ranks, each with its own
    random streams) restores the data order only."""
    source = state.get("source", LAST)
    if state.get("scheduler") is None:  # best.pt: replayed before the optimizer is loaded, whose saved lr wins
        replay_schedule(schedule, state["history"], state["step"])
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise DlrunError(
            f"{source} does not fit the model and optimizer of this config: {str(err).strip().splitlines()[0]}"
        ) from err
    if state.get("scheduler") is not None:
        schedule.load_state_dict(state["scheduler"])
    stopper.load_state_dict(state["early_stopping"])
    if "rng" not in state:  # best.pt keeps no random streams: they go on as this process's seed started them
        return
    if streams:
        restore_rng(state["rng"], *generators)
    else:
        generators[0].set_state(state["rng"]["generators"][0])


def replay_schedule(schedule, history: list[dict], step: int) -> None:
    """Step a fresh lr schedule as the run stepped it up to `step`: after each optimizer step, and after each
    epoch of `history` (plateau reads the monitored value of its row)."""
    if schedule.scheduler is None:
        return
    per_epoch = step // max(len(history), 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": no step is taken here
            for row in history:
                for _ in range(per_epoch if schedule.interval == "step" else 0):
                    schedule.after_step()
                schedule.after_epoch(row)
    except (ValueError, KeyError) as err:  # onecycle past its total steps (fewer epochs now), a missing column
        raise DlrunError(f"best.pt: the lr schedule cannot be replayed to step {step}: {err}") from err

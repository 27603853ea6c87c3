"""A run's figures, drawn in a helper process beside it: matplotlib's import (about 0.35 s) happens there while the
run imports torch, and each figure is drawn while the run goes on, so neither lies on the path to the answer.

The helper imports neither torch nor anything of the run's state: it gets plain arrays, calls one of figures.py's
functions on them and sends back the picture's pixels. The run itself writes every file and TensorBoard entry, so
that its atomic writes, its full-disk messages and what a resume finds stay as they were. When the helper cannot
start, or stops, the figures are drawn in the run's own process, as before it existed."""

import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from dlrun.observe.png import png_bytes

# What the helper draws: figures.py's functions that return pixels, or a Figure that it renders to pixels.
RECIPES = (
    "confusion_pixels",
    "image_grid_pixels",
    "pr_curve_figure",
    "roc_curve_figure",
    "threshold_figure",
    "curves_figure",
    "predictions_figure",
    "residuals_figure",
    "function_figure",
    "class_templates_figure",
    "decision_boundary_figure",
)
_HEADER = struct.Struct("<Q")


@dataclass(frozen=True)
class Picture:
    """A figure's pixels as one PNG, for a file and for a TensorBoard image alike."""

    height: int
    width: int
    png: bytes


def draw(recipe: str, *args, **kwargs) -> Picture:
    """The picture that figures.py's `recipe` gives for these arguments, PNG-encoded."""
    from dlrun.observe import figures

    if recipe not in RECIPES:
        raise ValueError(f"not a figure recipe: {recipe}")
    pixels = getattr(figures, recipe)(*args, **kwargs)
    if not hasattr(pixels, "shape"):  # a Figure
        pixels = figures.render(pixels)
    return Picture(pixels.shape[0], pixels.shape[1], png_bytes(pixels))


def serve() -> None:
    """The helper's loop: one request at a time from stdin, its answer to stdout, until stdin closes (the run ended,
    however it ended). Ctrl-C and SIGTERM are the run's to handle: the helper leaves when the run has gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout is the channel: nothing else may print there
    from dlrun.observe import figures  # noqa: F401 - matplotlib, while the run imports torch

    try:
        while (message := _read(requests)) is not None:
            ident, recipe, args, kwargs = message
            try:
                answer = (ident, True, draw(recipe, *args, **kwargs))
            except Exception as err:  # noqa: BLE001 - the run raises it where it asked for the picture
                answer = (ident, False, _picklable(err))
            _write(answers, answer)
    except OSError:  # the run has gone (its end closed the pipe): nothing is left to answer
        pass
    os._exit(0)  # not Python's shutdown, which would flush answers into a closed pipe and print that it could not


def _read(stream):
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body = stream.read(size)
    return pickle.loads(body) if len(body) == size else None


def _write(stream, message) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def _picklable(err: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(err).__name__}: {err}")


def _plain(value):
    """Arrays for the helper, which has no torch: a tensor becomes its numpy array, inside tuples and lists too."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Painter:
    """The run's side of the helper: `submit` returns at once with a Future of the picture."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pending: dict[int, tuple[Future, tuple]] = {}
        self.next_id = 0
        self.proc = _start_helper()
        self.outbox: list | None = None
        if self.proc is not None:
            self.outbox, self.wake = [], threading.Condition(self.lock)
            threading.Thread(target=self._send, name="dlrun-drawing-send", daemon=True).start()
            threading.Thread(target=self._receive, name="dlrun-drawing-receive", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def submit(self, recipe: str, *args, **kwargs) -> Future:
        future: Future = Future()
        args, kwargs = _plain(args), _plain(kwargs)
        with self.lock:
            if self.outbox is not None:
                self.next_id += 1
                self.pending[self.next_id] = (future, (recipe, args, kwargs))
                self.outbox.append((self.next_id, recipe, args, kwargs))
                self.wake.notify()
                return future
        _draw_here(future, recipe, args, kwargs)  # no helper: in this process, now
        return future

    def _send(self) -> None:
        while True:
            with self.lock:
                while self.outbox is not None and not self.outbox:
                    self.wake.wait()
                if self.outbox is None:
                    return
                batch, self.outbox[:] = list(self.outbox), []
            try:
                for message in batch:
                    _write(self.proc.stdin, message)
            except (OSError, ValueError, pickle.PicklingError):
                self._helper_gone()
                return

    def _receive(self) -> None:
        while True:
            try:
                message = _read(self.proc.stdout)
            except Exception:  # noqa: BLE001 - a cut-off answer: as if the helper had stopped
                message = None
            if message is None:
                self._helper_gone()
                return
            ident, ok, value = message
            with self.lock:
                future, _ = self.pending.pop(ident, (None, None))
            if future is None:
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _helper_gone(self) -> None:
        """The helper stopped (killed, or out of memory): what it had not answered is drawn here, as is what follows."""
        with self.lock:
            if self.outbox is None and not self.pending:
                return
            self.outbox, left = None, list(self.pending.values())
            self.pending.clear()
            self.wake.notify_all()
        for future, (recipe, args, kwargs) in left:
            _draw_here(future, recipe, args, kwargs)


def _draw_here(future: Future, recipe: str, args, kwargs) -> None:
    try:
        future.set_result(draw(recipe, *args, **kwargs))
    except Exception as err:  # noqa: BLE001 - raised where the picture is asked for, as when drawn in the helper
        future.set_exception(err)


def _start_helper() -> subprocess.Popen | None:
    """The helper process, or None where it cannot start (then figures are drawn in this process)."""
    if os.environ.get("DLRUN_DRAW_IN_PROCESS"):
        return None
    env = {k: v for k, v in os.environ.items() if k != "DLRUN_KILL_POINT"}  # a kill point is the run's own
    # The same dlrun as this process's, even where it was imported from a source tree that is not installed.
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    try:
        return subprocess.Popen(
            [sys.executable, "-c", "from dlrun.observe.drawing import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
    except OSError:
        return None


_painter: Painter | None = None
_painter_lock = threading.Lock()


def painter() -> Painter:
    """This process's painter, started on first use and shared by every run it trains (a sweep's jobs too)."""
    global _painter
    with _painter_lock:
        if _painter is None or (_painter.proc is not None and _painter.proc.poll() is not None and _painter.outbox is None):
            _painter = Painter()
        return _painter


def helper_pids() -> set[int]:
    """The helper's pid, if one runs: not one of a sweep's workers, to which SIGTERM is forwarded."""
    with contextlib.suppress(Exception):
        if _painter is not None and _painter.pid is not None:
            return {_painter.pid}
    return set()

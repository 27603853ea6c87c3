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
    "pr_curve_pixels",
    "roc_curve_pixels",
    "threshold_figure",
    "curves_pixels",
    "sweep_curves_figure",
    "predictions_figure",
    "residuals_figure",
    "function_figure",
    "class_templates_figure",
    "decision_boundary_figure",
)
_HEADER = struct.Struct("<Q")
READY = 0  # the helper's first message, once matplotlib is imported; requests are numbered from 1
# About how long each takes to draw, in units of 10 ms (a 10-class run's figures on a 2-core CPU, a helper's second
# of each: its first builds the frame the others reuse): a picture goes to the helper owing the least time, so that
# a run's end-of-run figures finish together. Others: 5.
COST = {"curves_pixels": 6, "pr_curve_pixels": 3, "roc_curve_pixels": 3, "confusion_pixels": 1, "image_grid_pixels": 2}


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
        _write(answers, (READY, True, None))  # imported: a second helper may start its import now
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
    """The run's side of the helpers: `submit` returns at once with a Future of the picture.

    A run's end asks for several figures at once (curves, PR and ROC curves, the confusion matrices), which two
    helpers draw side by side while the run waits. The second starts when the first has imported matplotlib, so
    that the two imports never take a core from each other, nor from the run's own import of torch."""

    def __init__(self, helpers: int = 1):
        self.lock = threading.Lock()
        self.next_id = 0
        self.wanted = 0
        self.helpers: list[_Helper] = []
        self.add_helpers(helpers)

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.helpers[0].proc if self.helpers else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> list["_Helper"]:
        return [h for h in self.helpers if h.alive and h.proc.poll() is None]

    def add_helpers(self, wanted: int) -> None:
        """Helpers up to `wanted` in all, one at a time (fewer where they cannot start; none is started again)."""
        with self.lock:
            self.wanted = max(self.wanted, wanted)
        self._grow()

    def _grow(self) -> None:
        with self.lock:
            if len(self.helpers) >= self.wanted or any(h.alive and not h.ready for h in self.helpers):
                return
            proc = _start_helper()
            if proc is None:
                self.wanted = len(self.helpers)
                return
            self.helpers.append(_Helper(proc, on_ready=self._grow))

    def submit(self, recipe: str, *args, **kwargs) -> Future:
        future: Future = Future()
        args, kwargs = _plain(args), _plain(kwargs)
        for helper in self._choices():
            with self.lock:
                self.next_id += 1
                ident = self.next_id
            if helper.submit(ident, future, recipe, args, kwargs):
                return future
        _draw_here(future, recipe, args, kwargs)  # no helper: in this process, now
        return future

    def _choices(self) -> list["_Helper"]:
        """The helpers to ask, best first: the one owing the least time, the first on a tie. So each epoch's val card,
        asked for when both are idle, goes to the first, which keeps its frame (matplotlib's part of it)."""
        return sorted(self.alive(), key=_Helper.owed)


class _Helper:
    """One helper process: the requests go out in order on one thread, the answers come back on another."""

    def __init__(self, proc: subprocess.Popen, on_ready=lambda: None):
        self.proc = proc
        self.on_ready = on_ready  # called once it has imported matplotlib, or has stopped before
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.pending: dict[int, tuple[Future, tuple]] = {}
        self.outbox: list = []
        self.alive, self.ready = True, False
        threading.Thread(target=self._send, name="dlrun-drawing-send", daemon=True).start()
        threading.Thread(target=self._receive, name="dlrun-drawing-receive", daemon=True).start()

    def owed(self) -> int:
        """What its pictures still to come take to draw, about (COST)."""
        with self.lock:
            return sum(COST.get(recipe, 5) for _, (recipe, _, _) in self.pending.values())

    def submit(self, ident: int, future: Future, recipe: str, args, kwargs) -> bool:
        """Queue one picture; False when this helper has stopped (the caller asks another, or draws it itself)."""
        with self.lock:
            if not self.alive:
                return False
            self.pending[ident] = (future, (recipe, args, kwargs))
            self.outbox.append((ident, recipe, args, kwargs))
            self.wake.notify()
            return True

    def _send(self) -> None:
        while True:
            with self.lock:
                while self.alive and not self.outbox:
                    self.wake.wait()
                if not self.alive:
                    return
                batch, self.outbox[:] = list(self.outbox), []
            try:
                for message in batch:
                    _write(self.proc.stdin, message)
            except (OSError, ValueError, pickle.PicklingError):
                self._gone()
                return

    def _receive(self) -> None:
        while True:
            try:
                message = _read(self.proc.stdout)
            except Exception:  # noqa: BLE001 - a cut-off answer: as if the helper had stopped
                message = None
            if message is None:
                self._gone()
                return
            ident, ok, value = message
            if ident == READY:
                self.ready = True
                self.on_ready()
                continue
            with self.lock:
                future, _ = self.pending.pop(ident, (None, None))
            if future is None:
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _gone(self) -> None:
        """The helper stopped (killed, or out of memory): what it had not answered is drawn here, as is what follows."""
        with self.lock:
            if not self.alive and not self.pending:
                return
            self.alive, left = False, list(self.pending.values())
            self.pending.clear()
            self.outbox.clear()
            self.wake.notify_all()
        if not self.ready:
            self.on_ready()  # the next one may start: this one never will be ready
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
    """This process's painter, started on first use and shared by every run it trains (a sweep's jobs too); a new
    one when every helper of the last has stopped."""
    global _painter
    with _painter_lock:
        if _painter is None or (_painter.helpers and not _painter.alive()):
            _painter = Painter()
        return _painter


def draw_with_helpers_if_running(recipe: str, *args, **kwargs) -> Picture:
    """One picture, drawn by this process's helpers where they run (a sweep's end), else here: a command that has
    no helper yet would wait for one to start about as long as drawing it here takes."""
    with _painter_lock:
        running = _painter is not None and _painter.alive()
    return _painter.submit(recipe, *args, **kwargs).result() if running else draw(recipe, *args, **kwargs)


def helper_pids() -> set[int]:
    """The helpers' pids: not among a sweep's workers, to which SIGTERM is forwarded."""
    with contextlib.suppress(Exception):
        if _painter is not None:
            return {h.proc.pid for h in _painter.helpers}
    return set()

"""What a run prints on a terminal: lines a person can copy."""

import io

from rich.console import Console as RichConsole

from dlrun.observe.console import Console


def test_a_long_hint_line_is_never_broken_on_a_narrow_terminal():
    console = Console()
    out = io.StringIO()
    console.rich, console.tty, console.silent = RichConsole(file=out, force_terminal=True, width=40, highlight=False), True, False
    hint = "open it with: tensorboard --logdir /very/long/outputs/runs/2026-12-02_10-00-00_cnn_mnist"
    console.print(hint)
    assert hint in out.getvalue().splitlines(), "one line, whatever the width"


def test_the_progress_display_redraws_at_most_twice_a_second():
    console = Console()
    console.rich, console.tty, console.silent = RichConsole(file=io.StringIO(), force_terminal=True, width=80), True, False
    with console.training(epochs=3):
        console.start_epoch(1, batches=10)
        console.step("loss 0.5")
        live = console.progress.live
        assert live.auto_refresh and live.refresh_per_second <= 2, "10 redraws a second slowed the epochs on a terminal"

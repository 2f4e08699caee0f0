"""What the training loop shows on the console (rank 0): one line per log step, a bar on a terminal.

    [libra] step 120/2000 | loss 2.3456 (text 2.1034, image 2.6012) | lr 3.00e-04 | 5,210 tok/s | ETA 0:41:07

A loss part is shown only when the step had targets of its kind: the model reports no part without
targets and the recipe counts it as 0 (libra/train/recipe.py `_part`); a NaN part is shown. The tqdm
bar is drawn only when stderr is a terminal, so a log file or a CI log holds the lines alone. The same
numbers go to the metric logger under their slash names (libra/tracking.py).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping

from tqdm import tqdm


def format_log_line(step: int, total_steps: int, metrics: Mapping[str, float], eta_seconds: float) -> str:
    """The console line of a log step, from its metrics (``train/loss``, ``train/lr``, ...)."""
    parts = [
        f"{name} {metrics[key]:.4f}"
        for name, key in (("text", "train/loss_text"), ("image", "train/loss_image"))
        if metrics.get(key, 0.0) != 0.0  # NaN != 0: a non-finite part is shown
    ]
    loss = f"loss {metrics['train/loss']:.4f}" + (f" ({', '.join(parts)})" if parts else "")
    fields = [
        f"step {step}/{total_steps}",
        loss,
        f"lr {metrics['train/lr']:.2e}",
        f"{metrics['perf/tokens_per_s']:,.0f} tok/s",
        f"ETA {_clock(eta_seconds)}",
    ]
    return "[libra] " + " | ".join(fields)


class TrainProgress:
    """The console of one run of the loop: `step_done` after every step, `close` at the end.

    `show`: this process prints (rank 0). `terminal`: draw the bar; default whether stderr is a tty.
    The ETA is the remaining steps times the mean step time of this process so far (a resumed run
    starts measuring at its first step)."""

    def __init__(self, total_steps: int, first_step: int, show: bool, terminal: bool | None = None) -> None:
        self.total_steps = total_steps
        self.first_step = first_step
        self.show = show
        self.started = time.perf_counter()
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = None
        if show and terminal:
            self.bar = tqdm(total=total_steps, initial=first_step, desc="train", dynamic_ncols=True)

    def step_done(self, step: int, metrics: Mapping[str, float] | None) -> None:
        """After step `step`; `metrics` on a log step (its line is printed), None otherwise."""
        if self.bar is not None:
            self.bar.update(1)
        if metrics is None or not self.show:
            return
        line = format_log_line(step, self.total_steps, metrics, self.eta(step))
        if self.bar is not None:
            self.bar.write(line)  # above the bar, which is redrawn below it
        else:
            print(line, flush=True)

    def eta(self, step: int) -> float:
        """Seconds left at the mean step time so far; NaN before the first step."""
        done = step - self.first_step
        if done <= 0:
            return math.nan
        return (time.perf_counter() - self.started) / done * (self.total_steps - step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"

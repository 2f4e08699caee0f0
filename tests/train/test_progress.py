"""The console of the training loop: the log line's fields, the loss parts it shows, the ETA, the bar."""

import math

from libra.train.progress import TrainProgress, format_log_line

METRICS = {
    "train/loss": 2.5,
    "train/loss_text": 2.25,
    "train/loss_image": 0.0,  # the step had no image targets
    "train/lr": 3e-4,
    "perf/tokens_per_s": 5210.4,
}


def test_the_line_shows_the_loss_parts_that_carry_data():
    line = format_log_line(120, 2000, METRICS, eta_seconds=2467.2)
    expected = "[libra] step 120/2000 | loss 2.5000 (text 2.2500) | lr 3.00e-04 | 5,210 tok/s | ETA 0:41:07"
    assert line == expected
    both = format_log_line(3, 3, {**METRICS, "train/loss_image": 2.75}, eta_seconds=0.0)
    assert "loss 2.5000 (text 2.2500, image 2.7500)" in both and both.endswith("ETA 0:00:00")
    nan = format_log_line(1, 3, {**METRICS, "train/loss": math.nan, "train/loss_image": math.nan}, math.nan)
    assert "loss nan (text 2.2500, image nan)" in nan and nan.endswith("ETA ?")


def test_lines_are_printed_without_a_bar_off_a_terminal(capsys):
    progress = TrainProgress(total_steps=4, first_step=2, show=True, terminal=False)
    progress.step_done(3, None)  # not a log step: nothing
    progress.step_done(4, METRICS)
    progress.close()
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    assert line.startswith("[libra] step 4/4 | loss 2.5000") and line.endswith("ETA 0:00:00")
    assert err == ""


def test_a_terminal_gets_the_bar_and_other_ranks_print_nothing(capsys):
    progress = TrainProgress(total_steps=2, first_step=0, show=True, terminal=True)
    progress.step_done(1, METRICS)
    progress.close()
    out, err = capsys.readouterr()
    assert "[libra] step 1/2" in out and "train:" in err and "1/2" in err
    quiet = TrainProgress(total_steps=2, first_step=0, show=False, terminal=True)
    quiet.step_done(1, METRICS)
    quiet.close()
    assert capsys.readouterr() == ("", "")

"""Specification of progress output: a rich bar on a terminal; off one (under DVC, in CI) periodic log lines
that say how far, how fast and how long still, without flooding the log."""

from __future__ import annotations

import io
import logging

from rich.console import Console

from bonescan.progress import ProgressLog, RunningMean, eta, format_duration, progress, track


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bonescan.progress"]  # the default logger


def test_durations_read_as_minutes_or_hours():
    assert (format_duration(65), format_duration(3723), format_duration(-1)) == ("1:05", "1:02:03", "0:00")


def test_a_line_every_n_seconds_gives_the_count_the_rate_and_the_eta(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    bar = ProgressLog("ingest bone", total=1000, unit="files", every_s=30, fraction=None, clock=clock)
    for done in range(1, 101):  # 100 files in 50 s: 2 files/s, 900 left -> 7:30
        clock.now += 0.5
        bar.update(done)
    assert lines_of(caplog) == ["ingest bone: 60/1000 files (6%), 2.00 files/s, ETA 7:50"]
    bar.close()
    assert lines_of(caplog)[-1] == "ingest bone: 100/1000 files (10%), 2.00 files/s, ETA 7:30"


def test_a_line_per_tenth_of_the_total_however_fast_and_a_closing_line(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    bar = ProgressLog("synthesize benign", total=50, unit="images", every_s=None, clock=clock)
    for done in range(1, 51):
        clock.now += 0.25
        bar.update(done, "kept 48")
    lines = lines_of(caplog)
    assert [line.split("/")[0] for line in lines] == [f"synthesize benign: {n}" for n in range(5, 51, 5)]
    assert lines[0] == "synthesize benign: 5/50 images (10%), 4.00 images/s, ETA 0:11, kept 48"
    assert lines[-1] == "synthesize benign: 50/50 images (100%), 4.00 images/s, done in 0:12, kept 48"
    bar.close()
    assert len(lines_of(caplog)) == 10  # the last line already said it all


def test_a_short_loop_writes_no_line(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    bar = ProgressLog("val", total=3, every_s=30, fraction=None, clock=clock)
    for done in range(1, 4):
        clock.now += 1
        bar.update(done)
    bar.close()
    assert lines_of(caplog) == []


def test_a_resumed_run_counts_only_its_own_steps_in_the_rate(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    bar = ProgressLog(
        "mu_acgan", total=1000, unit="steps", completed=800, every_s=10, fraction=None, clock=clock
    )
    clock.now += 10
    bar.update(820)  # 20 steps in 10 s, not 820
    assert lines_of(caplog) == ["mu_acgan: 820/1000 steps (82%), 2.00 steps/s, ETA 1:30"]


def test_without_a_total_lines_give_count_and_rate(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    bar = ProgressLog("walk", unit="files", every_s=5, clock=clock)
    clock.now += 5
    bar.update(20)
    assert lines_of(caplog) == ["walk: 20 files, 4.00 files/s"]


def test_off_a_terminal_track_logs_loss_rate_and_eta_and_yields_every_item(caplog):
    caplog.set_level(logging.INFO)
    meter = RunningMean()
    meter.update(0.25, 4)
    not_a_tty = Console(file=io.StringIO())
    items = list(
        track(range(10), "finetune 1/3", meter, total=10, refresh_every=1, every_s=0, console=not_a_tty)
    )
    assert items == list(range(10)) and not_a_tty.file.getvalue() == ""
    lines = lines_of(caplog)
    assert lines[0].startswith("finetune 1/3: 1/10 batches (10%), ") and "batches/s, ETA " in lines[0]
    assert "loss 0.2500" in lines[0] and "img/s" in lines[0] and "done in" in lines[-1]


def test_on_a_terminal_a_bar_shows_rate_and_eta_and_nothing_is_logged(caplog):
    caplog.set_level(logging.INFO)
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    with progress("gan", total=4, unit="steps", console=terminal) as bar:
        for done in range(1, 5):
            bar.update(done)
    shown = terminal.file.getvalue()
    assert "gan" in shown and "steps/s" in shown and "ETA" in shown
    assert lines_of(caplog) == []


def test_disabled_progress_writes_nothing(caplog):
    caplog.set_level(logging.INFO)
    with progress("rank 1", total=2, enabled=False, every_s=0) as bar:
        bar.update(1)
        bar.update(2)
    assert lines_of(caplog) == []


def test_an_epoch_lines_eta_is_the_mean_epoch_time_times_the_epochs_left():
    assert (
        eta(2, 10, 60.0) == "ETA 4:00"
        and eta(10, 10, 61.0) == "done in 1:01"
        and eta(0, 10, 5.0) == "ETA unknown"
    )

"""The bench's per-window rate: results counted in the window they arrived in."""

from __future__ import annotations

from checkout_saga.dev.bench import Run, windows


def test_results_are_counted_per_window_from_the_first_send() -> None:
    run = Run("r", started=100.0, finished=[100.5, 101.0, 104.9, 105.1, 112.0])
    assert windows(run) == [0.6, 0.2, 0.2]


def test_a_steady_rate_gives_flat_windows_and_no_results_none() -> None:
    run = Run("r", started=0.0, finished=[i / 10 for i in range(150)])  # 10/s for 15 s
    assert windows(run) == [10.0, 10.0, 10.0]
    assert windows(Run("empty")) == []

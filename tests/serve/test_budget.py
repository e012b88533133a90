"""The pixel budget: decoded images hold their pixels, and wait (first come, first served) until they fit."""

from __future__ import annotations

import threading
import time

import pytest

from hybridcxr.serve.budget import PixelBudget


def test_holds_add_up_to_the_total_and_come_back():
    budget = PixelBudget(100)
    with budget.hold(60):
        with budget.hold(40):
            assert budget.held == 100
        assert budget.held == 60
    assert budget.held == 0
    with budget.hold(10**9):  # more than the whole budget: takes all of it, never waits for ever
        assert budget.held == 100


def test_a_hold_that_does_not_fit_waits_until_pixels_come_back():
    budget, order = PixelBudget(100), []
    first = budget.hold(70)
    first.__enter__()

    def later() -> None:
        with budget.hold(50):
            order.append("later")

    thread = threading.Thread(target=later)
    thread.start()
    time.sleep(0.2)
    assert order == [] and budget.held == 70, "50 more do not fit beside 70"
    order.append("released")
    first.__exit__(None, None, None)
    thread.join(timeout=10)
    assert order == ["released", "later"] and budget.held == 0


def test_a_large_waiting_hold_is_not_overtaken_by_small_ones():
    budget, order = PixelBudget(100), []
    first = budget.hold(60)
    first.__enter__()

    def hold(name: str, pixels: int) -> None:
        with budget.hold(pixels):
            order.append(name)

    large = threading.Thread(target=hold, args=("large", 100))
    large.start()
    time.sleep(0.2)
    small = threading.Thread(target=hold, args=("small", 10))  # would fit now, but the large one is first
    small.start()
    time.sleep(0.2)
    assert order == []
    first.__exit__(None, None, None)
    large.join(timeout=10)
    small.join(timeout=10)
    assert order == ["large", "small"]


def test_an_exception_in_the_block_gives_the_pixels_back():
    budget = PixelBudget(10)
    with pytest.raises(RuntimeError), budget.hold(10):
        raise RuntimeError("decode failed")
    assert budget.held == 0
    with pytest.raises(ValueError, match="positive"):
        PixelBudget(0)

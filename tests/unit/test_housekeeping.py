"""jhansi.housekeeping: work done at once for a library caller, after the answer in
the command."""

from __future__ import annotations

import threading

import pytest

from jhansi import housekeeping


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(housekeeping, "_deferring", False)
    monkeypatch.setattr(housekeeping, "_pending", [])


def test_a_library_caller_gets_the_work_done_before_later_returns() -> None:
    done: list[str] = []
    housekeeping.later(lambda: done.append(threading.current_thread().name), "x")
    assert done == [threading.current_thread().name]
    assert housekeeping.pending() == 0


def test_after_defer_the_work_goes_on_beside_the_caller_until_finish() -> None:
    housekeeping.defer()
    release = threading.Event()
    done: list[str] = []

    def work() -> None:
        release.wait(10)
        done.append(threading.current_thread().name)

    housekeeping.later(work, "jhansi-test-work")
    assert done == []  # later() returned while the work waits
    assert housekeeping.pending() == 1
    assert housekeeping.finish(timeout=0.05) is False  # still going: finish says so
    release.set()
    assert housekeeping.finish() is True
    assert done == ["jhansi-test-work"]
    assert housekeeping.pending() == 0


def test_finished_work_does_not_pile_up_in_a_long_lived_process() -> None:
    housekeeping.defer()
    for _ in range(50):
        housekeeping.later(lambda: None, "quick")
        housekeeping.finish()
    housekeeping.later(lambda: None, "quick")
    assert len(housekeeping._pending) <= 2
    assert housekeeping.finish() is True


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_work_that_fails_is_logged_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    housekeeping.defer()

    def broken() -> None:
        raise RuntimeError("the engine went away")

    housekeeping.later(broken, "broken")
    assert housekeeping.finish() is True
    assert "Traceback" not in capsys.readouterr().err

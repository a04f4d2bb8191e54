"""run_isolated: results, errors, timeouts and thread settings cross the process boundary."""

from __future__ import annotations

import os
import time

import pytest

from recmine.isolate import IsolatedError, run_isolated


def _env_and_pid(name: str) -> tuple[str | None, int]:
    return os.environ.get(name), os.getpid()


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


def _boom(x: int) -> int:
    raise KeyError(f"no key {x}")


def _sleep(s: float) -> None:
    time.sleep(s)


def _die() -> None:
    os._exit(3)


def test_runs_in_another_process_with_its_thread_count() -> None:
    value, pid = run_isolated(_env_and_pid, "OMP_NUM_THREADS", threads=1)
    assert value == "1" and pid != os.getpid()
    assert run_isolated(_numba_threads, threads=1) == 1


def test_parent_environment_is_left_alone() -> None:
    before = dict(os.environ)
    run_isolated(_env_and_pid, "X", env={"RECMINE_ISOLATE_PROBE": "yes"})
    assert dict(os.environ) == before
    assert run_isolated(_env_and_pid, "RECMINE_ISOLATE_PROBE", env={"RECMINE_ISOLATE_PROBE": "yes"})[0] == "yes"


def test_errors_timeouts_and_deaths_are_reported() -> None:
    with pytest.raises(IsolatedError, match="no key 7"):
        run_isolated(_boom, 7)
    with pytest.raises(TimeoutError, match="_sleep"):
        run_isolated(_sleep, 30.0, timeout=2.0)
    with pytest.raises(IsolatedError, match="exit code 3"):
        run_isolated(_die)
    with pytest.raises(ValueError, match="threads"):
        run_isolated(_sleep, 0.0, threads=0)

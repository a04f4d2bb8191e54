"""Run a function alone in a fresh process with a set thread count, so engines never share a thread pool.

numba's and faiss's OpenMP workers spin after a parallel region; on two hyperthreads of one core, an engine timed
beside another engine's idle-spinning pool runs 2-3x slower. Benchmarks, `retrieve bench` and the demo therefore
time every engine through `run_isolated`: a spawned interpreter (nothing inherited but the arguments) whose
thread-count variables are set before anything is imported.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

THREAD_VARS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_env_lock = threading.Lock()


class IsolatedError(RuntimeError):
    """The function raised in its child process; the message carries the child's traceback."""


def _child(conn: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # report every failure, the parent re-raises it
        conn.send(("err", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    else:
        conn.send(("ok", result))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., T], *args: Any, threads: int | None = None, timeout: float | None = None,
                 env: dict[str, str] | None = None, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in a new spawned process and return its result.

    Parameters
    ----------
    fn
        A module-level (picklable) function; its arguments and result are pickled across the process boundary,
        so pass file paths rather than large arrays where the transfer would matter.
    threads
        When given, OMP/NUMBA/MKL/OPENBLAS thread counts of the child are set to it before it imports anything.
    timeout
        Seconds to wait for the result; the child is killed after that.
    env
        Extra environment variables for the child.

    Returns
    -------
    The function's return value.

    Raises
    ------
    TimeoutError
        The child did not finish within `timeout` (it is killed).
    IsolatedError
        The function raised, or the child died without answering (the message names the exit code).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
    extra = dict(env or {})
    if threads is not None:
        extra.update({k: str(threads) for k in THREAD_VARS})
    with _env_lock:  # a spawned child copies os.environ at start(): set ours just around it
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    send.close()
    try:
        if not recv.poll(timeout):
            raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not finish within {timeout} s")
        try:
            status, payload = recv.recv()
        except EOFError:
            proc.join(5)
            raise IsolatedError(f"{getattr(fn, '__name__', fn)} died without a result "
                                f"(exit code {proc.exitcode})") from None
    finally:
        recv.close()
        if proc.is_alive():
            proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status == "err":
        raise IsolatedError(payload)
    return payload

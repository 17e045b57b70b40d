"""One job in several processes on this machine: `launch` and the worker side of it.

`launch(fn, n_procs, args)` starts `n_procs` fresh Python processes, gives each
the usual torch.distributed environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
`MASTER_ADDR=127.0.0.1`, a free `MASTER_PORT`), runs `fn(*args)` in every one of them and returns
what rank 0's call returned. `fn` creates the process group itself, normally by building an
`accelerate.Accelerator` (gloo on CPU, nccl on CUDA; rank r uses `cuda:r` of the devices
`CUDA_VISIBLE_DEVICES` leaves visible).

Processes come from multiprocessing's "forkserver" where the platform has it (else "spawn"):
nothing of the caller's state — CUDA context, OpenMP thread pools, open files — is inherited,
but the server, started once per caller process, imports torch, transformers and accelerate
(`preload`) once, so every later worker starts in about a second instead of paying those imports
again (~5 s on this project's 2-core CPU). Each worker gets the caller's environment as it is at
`launch` time (the server's own is older).

The caller's process stays the coordinator, and this is what makes a multi-process job behave like
an ordinary function call:
- `report(*msg)` in rank 0 sends `msg` to the caller, where `on_report(*msg)` runs; rank 0 waits
  until it has returned, so a callback that raises (a cancelled run, a test simulating a crash)
  stops the job at exactly that point, as it would in one process (rank 0 is never released,
  the others block in their next collective, and all are stopped);
- an exception in any rank is re-raised in the caller (the original exception when it pickles,
  with the worker's traceback as its `__cause__`), after all workers are stopped;
- a worker that dies without a word (kill -9, the OOM killer) is reported as `WorkerDied`;
- if the caller dies, the workers notice within a second and exit.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import threading
import time
import traceback
from typing import Any, Callable

_CHANNEL: tuple | None = None  # (to_parent queue, ack queue, rank) inside a launched worker


class WorkerDied(RuntimeError):
    """A launched process exited without reporting a result or an error."""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback (set as `__cause__` of the re-raised exception)."""

    def __init__(self, tb: str):
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return self.tb


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_worker() -> bool:
    """True inside a process started by `launch`."""
    return _CHANNEL is not None


def report(*msg: Any) -> None:
    """From rank 0 of a launched job: run the caller's `on_report(*msg)` and wait for it.
    A no-op in other ranks and outside `launch`."""
    if _CHANNEL is None:
        return
    to_parent, ack, rank = _CHANNEL
    if rank != 0:
        return
    to_parent.put(("report", rank, msg))
    ack.get()


def _resolve(fn: Callable | str) -> Callable:
    if callable(fn):
        return fn
    mod, _, name = str(fn).partition(":")
    if not name:
        raise ValueError(f"expected 'package.module:function', got {fn!r}")
    obj = importlib.import_module(mod)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(parent_pid: int) -> None:
    # a forkserver child's parent is the server, not the caller: watch the caller itself
    while True:
        time.sleep(1.0)
        if not _alive(parent_pid):  # the caller is gone; nobody will read results
            os._exit(3)


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure: send a plain description instead
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _bootstrap(rank: int, n: int, port: int, threads: int, parent_pid: int, env: dict, fn, args: tuple,
               to_parent, ack) -> None:
    global _CHANNEL
    os.environ.clear()
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "OMP_NUM_THREADS": str(threads)})
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    _CHANNEL = (to_parent, ack, rank)
    code = 0
    try:
        import torch

        torch.set_num_threads(threads)
        out = _resolve(fn)(*args)
        to_parent.put(("done", rank, out if rank == 0 else None))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
        to_parent.put(("error", rank, (_picklable(e), traceback.format_exc())))
        code = 1
    finally:
        try:
            import torch.distributed as tdist

            if code == 0 and tdist.is_available() and tdist.is_initialized():
                tdist.destroy_process_group()
        except Exception:  # noqa: BLE001 - teardown only
            pass
        to_parent.close()
        to_parent.join_thread()  # flush the message before exiting
    if code:
        os._exit(code)  # do not wait in atexit handlers for peers that may be stuck in a collective


def _stop(procs, grace: float = 5.0) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


PRELOAD = ("torch", "torch.distributed", "transformers", "accelerate", "cotdsl.jobs.train")


def launch(fn: Callable | str, n_procs: int, args: tuple = (), *,
           on_report: Callable[..., Any] | None = None, threads: int | None = None,
           preload: tuple[str, ...] = (), start_method: str | None = None) -> Any:
    """Run `fn(*args)` in `n_procs` new processes (ranks 0..n-1) and return rank 0's result.

    `fn` is a module-level function or a `"package.module:function"` path; it and `args` are
    pickled to the workers. `threads` = torch threads per worker (default: this process's torch
    thread count divided among the workers, at least 1). `preload`: modules the forkserver imports
    besides `PRELOAD` (only the first launch of a process starts the server, so only its list
    counts). `start_method`: "forkserver" (default where available) or "spawn". Raises the first
    worker exception, or `WorkerDied` when a worker exits without a result. Whatever happens, no
    worker outlives this call."""
    if n_procs < 1:
        raise ValueError(f"n_procs must be >= 1, got {n_procs}")
    if threads is None:
        import torch

        threads = max(1, torch.get_num_threads() // n_procs)
    method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(list(dict.fromkeys(["__main__", *PRELOAD, *preload])))
    to_parent, ack = ctx.Queue(), ctx.Queue()
    port = free_port()
    env = dict(os.environ)
    procs = [ctx.Process(target=_bootstrap, name=f"cotdsl-rank{r}", daemon=True,
                         args=(r, n_procs, port, threads, os.getpid(), env, fn, args, to_parent, ack))
             for r in range(n_procs)]
    result, done = None, set()
    try:
        for p in procs:
            p.start()
        while len(done) < n_procs:
            try:
                kind, rank, payload = to_parent.get(timeout=0.2)
            except queue_mod.Empty:
                for r, p in enumerate(procs):
                    if r not in done and p.exitcode is not None:
                        # it may have reported just before exiting: look once more
                        try:
                            kind, rank, payload = to_parent.get(timeout=1.0)
                            break
                        except queue_mod.Empty:
                            raise WorkerDied(f"rank {r} of {n_procs} exited with code {p.exitcode} "
                                             "without a result (killed, or out of memory?)") from None
                else:
                    continue
            if kind == "report":
                if on_report is not None:
                    on_report(*payload)  # if this raises, rank 0 stays parked until it is stopped
                ack.put(None)
            elif kind == "done":
                done.add(rank)
                if rank == 0:
                    result = payload
            elif kind == "error":
                exc, tb = payload
                raise exc from RemoteTraceback(f"\n[rank {rank}] {tb}")
        for p in procs:
            p.join()
        return result
    finally:
        _stop(procs)
        for q in (to_parent, ack):
            q.cancel_join_thread()
            q.close()

"""Start one worker process per slot of a `search.gpus.WorkerPlan` on this host and watch them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from search.gpus import WorkerPlan

def start_workers(argv: Sequence[str], plan: WorkerPlan, log_dir: Path) -> list[subprocess.Popen]:
    """Start ``python -m search.run <argv> --worker-index i`` once per slot of the plan.

    Each worker's output goes to ``log_dir/worker-<i>.log``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for index, extra in enumerate(plan.environments()):
        log = open(log_dir / f"worker-{index}.log", "a")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "search.run", *argv, "--worker-index", str(index)],
            env={**os.environ, **extra, "PYTHONUNBUFFERED": "1"},
            stdout=log, stderr=subprocess.STDOUT,
        ))
    return procs


def supervise(procs: list[subprocess.Popen], *, on_tick: Callable[[], None],
              on_death: Callable[[subprocess.Popen], None], interval: float = 1.0) -> bool:
    """Wait for every worker; call ``on_tick`` periodically and ``on_death`` for a crashed one.

    A worker that exits with an error does not stop the others. Returns True when the wait was
    interrupted: Ctrl-C on a terminal reaches the workers itself; a SIGTERM sent to this process
    alone is passed on to them. Either way they end their trial cleanly and exit.
    """
    pending = set(range(len(procs)))
    try:
        while pending:
            time.sleep(interval)
            for i in sorted(pending):
                code = procs[i].poll()
                if code is None:
                    continue
                pending.discard(i)
                if code not in (0, 130):
                    on_death(procs[i])
            on_tick()
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # ignored by a worker already stopping
        for p in procs:
            try:
                p.wait(timeout=120)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                p.kill()
        on_tick()
        return True
    return False

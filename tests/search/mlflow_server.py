"""A real ``mlflow server`` on loopback (SQLite runs unless told, artifacts served), for the tests of a
study tracked on a server, including one that goes away and comes back on the same port."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.search.pg import free_port


class MlflowServer:
    def __init__(self, root: Path, workers: int = 2, backend_store_uri: str | None = None) -> None:
        self.root, self.port, self.workers = root, free_port(), workers
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root}/mlflow.db"
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        """Start the server (again, on the same port and store) and wait until it answers."""
        mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        with (self.root / "server.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(self.workers), "--backend-store-uri", self.backend_store_uri,
                 "--artifacts-destination", str(self.root / "artifacts")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("mlflow server did not start: "
                                       + (self.root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and its worker processes (its whole process group)."""
        import os
        import signal

        if self._proc is None or self._proc.poll() is not None:
            return
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

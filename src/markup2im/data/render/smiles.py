"""SMILES molecules: RDKit ``Draw.MolToImage`` (RGB), in a worker process.

RDKit draws in-process, and some inputs take minutes (a chain of a few thousand atoms) or would
never finish; only a separate process can be stopped. So a batch runs in
``python -m markup2im.data.render.smiles`` which reports each finished molecule on its output, and
the watchdog kills it when one molecule takes longer than the timeout. The molecule is drawn at
the canvas size (RDKit's own layout and colours) and then cropped like every other domain.

Molecules of a batch share the worker: a SMILES string is data that RDKit parses, never a
program, and the worker itself names and writes each image, so no molecule can reach another's
file. A molecule that exhausts the worker's memory limit fails with a message naming it, and the
rest of the batch goes on in a new worker.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import logging
import re
import resource
import sys
from pathlib import Path

from markup2im.data.render.base import (
    BatchContext,
    Raw,
    clip,
    crash_note,
    open_image,
    run_dir,
    timeout_error,
)
from markup2im.data.render.process import renderer_env, run_watched
from markup2im.errors import RenderError

BATCH_SIZE = 256  # starting the worker (Python + RDKit) costs about 0.5 s; a molecule ~2 ms
STARTUP_SECONDS = 30.0  # importing RDKit; the worker reports when it is ready
_PROGRESS = re.compile(r"^M2I(?:-READY| \{.*\})$", re.MULTILINE)
_DONE = re.compile(r"^M2I (\{.*\})$", re.MULTILINE)
_OUT_OF_MEMORY = "out of memory"  # the worker's error for a molecule that hit the memory limit


def check_available() -> None:
    """Raise RenderError when RDKit is not installed."""
    if importlib.util.find_spec("rdkit") is None:
        raise RenderError(
            "RDKit is not installed; install it with `pip install rdkit` (or the "
            "project's extra: `pip install markup2im[molecules]`)"
        )


def render_batch(markups: list[str], ctx: BatchContext) -> list[Raw]:
    """Draw each SMILES; a molecule that takes too long is killed and the rest go on."""
    results: dict[int, Raw] = {}
    pending = collections.deque([list(range(len(markups)))])
    runs = 0
    while pending:
        batch = pending.popleft()
        runs += 1
        directory = run_dir(ctx, f"run{runs}")
        (directory / "input.json").write_text(
            json.dumps([markups[i] for i in batch]), encoding="utf-8", errors="replace"
        )
        outcome = run_watched(
            [
                sys.executable,
                "-m",
                "markup2im.data.render.smiles",
                "input.json",
                str(ctx.width),
                str(ctx.height),
            ],
            cwd=directory,
            workdir=directory,
            timeout=ctx.timeout,
            progress=_PROGRESS,
            items=len(batch),
            startup=STARTUP_SECONDS,
            env=renderer_env(directory, {"PYTHONUNBUFFERED": "1"}),
            cancel=ctx.cancel,
            limits=ctx.limits,
        )
        if outcome.cancelled:
            for i in batch + [i for b in pending for i in b]:
                results[i] = Raw(error="cancelled")
            break
        done: set[int] = set()
        for match in _DONE.finditer(outcome.output):
            record = json.loads(match.group(1))
            n = record["n"]
            done.add(n)
            if record.get("error") == _OUT_OF_MEMORY:
                results[batch[n]] = Raw(error=ctx.limits.memory_message())
            elif record.get("error"):
                results[batch[n]] = Raw(error=record["error"])
            else:
                results[batch[n]] = open_image(directory / f"{n}.png", "RDKit drawing")
        rest = [n for n in range(len(batch)) if n not in done]
        if not rest:
            continue
        if outcome.limit:  # a disk bound, or memory that ran out outside a molecule's try
            results[batch[rest[0]]] = Raw(error=outcome.limit)
        elif outcome.timed_out:
            results[batch[rest[0]]] = Raw(error=timeout_error(ctx.timeout))
        else:  # the worker died on this molecule (a crash inside RDKit)
            lines = [ln for ln in outcome.output.splitlines() if ln.strip()]
            message = clip(lines[-1]) if lines else f"exit status {outcome.returncode}"
            note = crash_note(outcome, ctx.limits)
            results[batch[rest[0]]] = Raw(error=clip(f"RDKit worker died: {message} {note}"))
        if rest[1:]:
            pending.append([batch[n] for n in rest[1:]])
    return [results[i] for i in range(len(markups))]


# ---- the worker process ----------------------------------------------------------------------


class _Collect(logging.Handler):
    """Keeps RDKit's log messages (its parse errors) for the item being drawn."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", record.getMessage()).strip()
        if message:
            self.messages.append(message)


def _near_memory_limit() -> bool:
    """Has this worker's peak memory come within half of its address-space limit?"""
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return limit != resource.RLIM_INFINITY and peak > limit / 2


def _worker(input_path: Path, width: int, height: int) -> None:
    from rdkit import Chem, rdBase
    from rdkit.Chem import Draw

    rdBase.LogToPythonLogger()
    collect = _Collect()
    logger = logging.getLogger("rdkit")
    logger.handlers[:] = [collect]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    markups = json.loads(input_path.read_text(encoding="utf-8"))
    print("M2I-READY", flush=True)  # the per-item clock starts now
    for n, smiles in enumerate(markups):
        collect.messages.clear()
        record: dict[str, object] = {"n": n}
        try:
            mol = Chem.MolFromSmiles(smiles)
            if mol is None and not collect.messages and _near_memory_limit():
                record["error"] = _OUT_OF_MEMORY  # RDKit gives up silently when memory runs out
            elif mol is None:
                record["error"] = clip(
                    collect.messages[0] if collect.messages else "invalid SMILES"
                )
            elif mol.GetNumAtoms() == 0:
                record["error"] = "SMILES has no atoms"
            else:
                Draw.MolToImage(mol, size=(width, height)).convert("RGB").save(f"{n}.png")
        except MemoryError:  # the address-space limit of the sandbox (RDKit's bad_alloc too)
            record["error"] = _OUT_OF_MEMORY
        except Exception as exc:  # RDKit raises assorted runtime errors for odd molecules
            record["error"] = clip(f"{type(exc).__name__}: {exc}")
        print("M2I " + json.dumps(record), flush=True)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))

"""Run logging: ``metrics.jsonl`` (one JSON object per logged step), a progress bar, TensorBoard."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm import tqdm

from ..atomic import atomic_write_text, writing
from ..deps import require


class MetricsLog:
    """Appends one JSON line per logged step; on resume, drops lines past the resumed step so the
    file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int | None = None, tensorboard: Path | None = None) -> None:
        """``tensorboard``: a folder for TensorBoard event files as well, or None."""
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line, record in _logged(path) if record["step"] <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))  # a full disk leaves the log whole
        self._file = path.open("a")
        self._tb = None
        if tensorboard is not None:
            self._tb = require_tensorboard().SummaryWriter(str(tensorboard))

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with writing(self.path):
            self._file.write(json.dumps(clean) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def require_tensorboard() -> ModuleType:
    """``torch.utils.tensorboard``, or an error naming the setting that needs it and what to install."""
    return require("torch.utils.tensorboard", "train.tensorboard: true", "pip install tensorboard")


def _logged(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every line of a ``metrics.jsonl`` file with its record. A torn last line (the run was killed, or the
    disk filled, in the middle of appending it: it lacks its newline) is left out; other damage is an error."""
    text = path.read_text()
    lines = text.splitlines()
    logged = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            logged.append((line, json.loads(line)))
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{path} line {number} is not a JSON object ({err.msg}); mend or remove it") from None
    return logged


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (without a torn last line: see :func:`_logged`)."""
    return [record for _, record in _logged(Path(path))]


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm:
    """A live bar with ETA; disabled in quiet mode and on non-zero ranks."""
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)

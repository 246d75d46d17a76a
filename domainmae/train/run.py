"""``pretrain()``, behind ``domainmae pretrain``: the recipe a run resolves to (named, from a file, or its
earlier run's config on ``resume``), its run folder, and the processes around :class:`~.loop.Trainer`."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import torch
import yaml

from ..distributed import cleanup_distributed, setup_distributed
from ..recipes import Recipe, load_recipe, resolve_recipe, save_recipe
from ..runtime import RunDir
from .logging import require_tensorboard
from .loop import Trainer


def _recipe_for_run(
    recipe: Recipe | str | Path, data: str | None, overrides: Sequence[str], run_dir: RunDir | None, resume: bool
) -> Recipe:
    """The recipe to train: on ``resume`` the run's own ``config.yaml``, else ``recipe`` (its ``demo`` section
    when a named recipe gets no ``data``); ``overrides`` last."""
    if resume:
        if run_dir is None or not run_dir.config.is_file():
            where = "" if run_dir is None else f"; none at {run_dir.root}"
            raise FileNotFoundError(f"--resume needs the run directory of an earlier run (--output){where}")
        return resolve_recipe(yaml.safe_load(run_dir.config.read_text()), overrides)
    if isinstance(recipe, Recipe):
        return resolve_recipe(recipe.model_dump(mode="json"), overrides)
    extra = [f"data.path={data}"] if data else []
    return load_recipe(recipe, [*extra, *overrides], demo=data is None)


def pretrain(
    recipe: Recipe | str | Path,
    *,
    data: str | None = None,
    output: str | Path | None = None,
    max_steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    overrides: Sequence[str] = (),
    resume: bool = False,
    quiet: bool = False,
) -> Path:
    """Pretrain an MAE and return the run directory.

    Args:
        recipe: built-in name (``cellpainting``, ``sentinel``), YAML path, or a :class:`Recipe`.
        data: the dataset path for the recipe; without it a named recipe runs its ``demo`` section
            on the bundled samples.
        output: run directory (default ``runs/<recipe>-<timestamp>``); with ``resume`` the run to continue.
        overrides: ``dotted.key=value`` recipe overrides; ``max_steps``/``epochs``/``batch_size`` are shortcuts.
    """
    shortcuts = [f"train.{k}={v}" for k, v in
                 (("max_steps", max_steps), ("epochs", epochs), ("batch_size", batch_size)) if v is not None]  # fmt: skip
    run_dir = RunDir(output) if output is not None else None
    resolved = _recipe_for_run(recipe, data, [*overrides, *shortcuts], run_dir, resume)
    if run_dir is None:
        run_dir = RunDir(Path("runs") / f"{resolved.name}-{datetime.now():%Y%m%d-%H%M%S}")
    if resolved.train.tensorboard:
        require_tensorboard()  # before the data and model are set up and the run folder is made
    info = setup_distributed(device)
    try:
        torch.manual_seed(resolved.train.seed)
        if info.is_main and not resume and run_dir.holds_run():
            raise FileExistsError(f"{run_dir.root} already holds a run; pass --resume to continue it or choose another --output")
        trainer = Trainer(resolved, run_dir, info, resume, quiet)
        # Written once the data and the checkpoint have accepted the recipe: resume reads this file, so a recipe
        # the data refuses must not replace it (nor leave a new folder that looks like a run).
        if info.is_main:
            run_dir.root.mkdir(parents=True, exist_ok=True)
            save_recipe(trainer.recipe, run_dir.config)
        trainer.run()
    finally:
        cleanup_distributed()
    return run_dir.root

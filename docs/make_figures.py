"""Regenerate the figures the docs show, by running the recipes that draw them.

    pip install -e ".[recipes]" && python docs/make_figures.py

Each entry of FIGURES runs one recipe (its `main(argv)`, in quick settings) into a
temporary folder and copies the PNGs it wrote to docs/img/, under the names the
pages use. To show a new figure, add an entry for the recipe that draws it (or add
the file to an existing entry) and reference `img/<name>.png` from the page that
talks about it. Figures are committed; CI does not redraw them.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

IMG = Path(__file__).resolve().parent / "img"

# (recipe in loopkit.recipes, its command-line arguments, {file it writes: name in docs/img})
FIGURES: list[tuple[str, list[str], dict[str, str]]] = [
    ("lr_find", ["--epochs", "4"], {"lr_find.png": "lr_find.png", "loss.png": "loss.png", "sched.png": "sched.png"}),
    ("digits", [], {"confusion.png": "confusion.png"}),
    ("activations", [], {f"{case}_{kind}.png": f"inside/{case}_{kind}.png"
                         for case, kind in [("default", "color_dim"), ("default", "stats"), ("default", "dead"),
                                            ("kaiming", "color_dim"), ("batchnorm", "color_dim")]}),
]


def main(only: list[str] | None = None) -> list[Path]:
    """Run each recipe of FIGURES (or only those named) and copy its figures to docs/img/; return them."""
    (IMG / "inside").mkdir(parents=True, exist_ok=True)
    written = []
    for recipe, argv, files in FIGURES:
        if only and recipe not in only:
            continue
        with tempfile.TemporaryDirectory() as out:
            importlib.import_module(f"loopkit.recipes.{recipe}").main([*argv, "--out", out])
            for made, name in files.items():
                written.append(Path(shutil.copyfile(Path(out) / made, IMG / name)))
    for path in written:
        print("wrote", path)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])

"""What every recipe shares: its command line, its data, a metric, the files it writes."""

from __future__ import annotations

import argparse
import csv
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from loopkit import ImageData, Learner, digits, image_folder, mnist_idx
from loopkit.callbacks import ClassificationInterpretation


def make_parser(doc: str, name: str, epochs: int | None, bs: int, lr: float | None,
                lr_help: str = "learning rate (default: %(default)s)",
                epochs_help: str = "number of epochs (default: %(default)s)") -> argparse.ArgumentParser:  # fmt: skip
    """Return the recipe's argument parser with the shared flags and the recipe's defaults.

    `epochs` or `lr` may be None when the recipe picks them itself (say per model); their help says how.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m loopkit.recipes.{name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=positive_int, default=epochs, help=epochs_help)
    parser.add_argument("--bs", type=positive_int, default=bs, help="training batch size (default: %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=lr, help=lr_help)
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the model's initial weights and the shuffling; the split is fixed (default: 0)")
    parser.add_argument("--data", type=Path, default=None, metavar="PATH",
                        help="a folder of MNIST IDX files, or one with train/ and valid/ folders of PNG images per "
                        "class (default: the 8x8 digits that ship with scikit-learn)")
    parser.add_argument("--out", type=Path, default=Path("runs") / name, metavar="DIR",
                        help="where to write metrics.csv, loss.png, model.pt... (default: %(default)s)")
    return parser


def positive_int(text: str) -> int:
    """Parse a command-line int that must be at least 1 (argparse reports the error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """Parse a command-line float that must be greater than 0 (argparse reports the error)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def load_data(path: Path | None) -> ImageData:
    """Return the embedded digits, or the MNIST IDX files or PNG class folders at `path`."""
    if path is None:
        return digits()
    if not Path(path).is_dir():
        raise SystemExit(
            f"--data {path}: no such folder; give a folder of MNIST IDX files (train-images-idx3-ubyte[.gz] "
            "and friends) or one with train/ and valid/ folders holding a folder of PNG images per class."
        )
    if (Path(path) / "train").is_dir():
        return image_folder(path)
    return mnist_idx(path)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the fraction of samples whose highest-scoring class is the target."""
    return (pred.argmax(dim=1) == y).float().mean()


def write_metrics(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write `rows` (one dict per epoch, as in `learn.avg_stats.history`) to a CSV file."""
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def report(final: dict[str, float], out: Path, files: Sequence[str]) -> dict[str, float]:
    """Print the final validation loss and accuracy and the files written; return `final`."""
    print(f"final valid_loss {final['valid_loss']:.4f}  accuracy {final['accuracy']:.4f}")
    print(f"wrote {', '.join(files)} to {out}")
    return final


def write_confusion(interp: ClassificationInterpretation, out: Path) -> str:
    """Write `out/confusion.png`, print the most confused classes; return the file's name."""
    interp.plot_confusion_matrix(path=out / "confusion.png")
    mistakes = ", ".join(f"{actual} as {predicted} ({count})" for actual, predicted, count in interp.most_confused(k=3))
    print(f"most confused (actual as predicted): {mistakes or 'none'}")
    return "confusion.png"


def save_outputs(learn: Learner, out: Path, sched: bool = False, also: Sequence[str] = (),
                 classes: Sequence[str] | None = None) -> dict[str, float]:  # fmt: skip
    """Evaluate the trained model, write its outputs into `out`, and report.

    The final figures come from `learn.validate()` on the valid loader, and the
    confusion matrix from `ClassificationInterpretation.from_learner(learn)`, with
    `classes` naming the classes. Writes metrics.csv, loss.png, sched.png (when
    `sched`), confusion.png and model.pt; `also` names files the recipe wrote there
    itself, for the report. Returns `train_loss` (the last epoch's), `valid_loss`
    and `accuracy`. Under distributed training every rank evaluates (evaluations are
    collective) and has the same figures, and only rank 0 writes.
    """
    history = learn.avg_stats.history
    valid = learn.validate()
    interp = ClassificationInterpretation.from_learner(learn, vocab=classes)
    final = {"train_loss": history[-1]["train_loss"], "valid_loss": valid.loss, **valid.metrics}
    if getattr(learn, "distributed", None) is not None and learn.distributed.rank != 0:
        return final
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(history, out / "metrics.csv")
    learn.recorder.plot_loss(path=out / "loss.png")
    if sched:
        learn.recorder.plot_sched(path=out / "sched.png")
    confusion = write_confusion(interp, out)
    # Weights only, on the CPU: loads anywhere with torch.load(path, weights_only=True).
    torch.save({k: v.cpu() for k, v in learn.model.state_dict().items()}, out / "model.pt")
    files = ["metrics.csv", "loss.png", *(["sched.png"] if sched else []), confusion, "model.pt", *also]
    return report(final, out, files)


def rss_bytes() -> int:
    """Return this process's resident set size now (Linux), or 0 where it can't be read."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return 0
    return int(statm.read_text().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); return whether it could."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """Return this process's peak resident set size since start, or since `reset_peak_rss`."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux

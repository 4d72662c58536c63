"""Data for `Learner`: the embedded digits, MNIST IDX files, PNG class folders, `TensorLoader`, `DataLoaders`.

`digits`, `mnist_idx` and `image_folder` each return an `ImageData`: float images
shaped (N, 1, H, W) and int64 labels for a train and a valid split. By default every
pixel is normalised with the mean and std of the training split only, so nothing
about the validation images leaks into training. `DataLoaders.from_tensors` turns
the splits into `TensorLoader`s (or torch `DataLoader`s) that `Learner` takes as `dls`.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

Tensors = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ImageData:
    """Images and labels of a train and a valid split.

    `train` and `valid` are `(x, y)`: float images (N, 1, H, W) and int64 labels that
    index `classes`. `mean` and `std` (1, H, W) are the training split's per-pixel
    statistics the images were normalised with (`None` when not normalised); treat
    new images the same way, `(x - mean) / std`.
    """

    train: Tensors
    valid: Tensors
    classes: list[str]
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None


def _image_data(train: Tensors, valid: Tensors, classes: list[str], normalize: bool) -> ImageData:
    if not normalize:
        return ImageData(train, valid, classes)
    mean, std = train[0].mean(0), train[0].std(0)
    # A pixel constant over the training set (a blank corner) is centred but not scaled,
    # so a valid image that differs there is not blown up by a near-zero std.
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return ImageData(((train[0] - mean) / std, train[1]), ((valid[0] - mean) / std, valid[1]), classes, mean, std)


def digits(valid_pct: float = 0.2, seed: int = 0, normalize: bool = True) -> ImageData:
    """Return the 1,797 8x8 handwritten digits that ship with scikit-learn, split in two.

    The valid split is `valid_pct` of the images, drawn by a permutation with its own
    generator seeded by `seed`: the same arguments always give the same split, whatever
    the global RNG state. Pixels are scaled from 0..16 to [0, 1] before normalising.
    scikit-learn is imported on the first call; without it this raises `ImportError`.
    """
    if not 0 < valid_pct < 1:
        raise ValueError(f"digits: valid_pct, the fraction to validate on, must be in (0, 1), e.g. 0.2; got {valid_pct!r}.")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "digits() reads the 8x8 digits that ship with scikit-learn, which is not installed; "
            "pip install 'loopkit[recipes]' (or scikit-learn)."
        ) from err
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    valid, train = order.split([round(len(y) * valid_pct), len(y) - round(len(y) * valid_pct)])
    return _image_data((x[train], y[train]), (x[valid], y[valid]), [str(i) for i in range(10)], normalize)


_IDX_NAMES = [
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),  # the train split
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),  # MNIST's test set, our valid split
]


def mnist_idx(path: str | Path, normalize: bool = True) -> ImageData:
    """Read MNIST from the four IDX files in folder `path`, gzipped or not.

    The `train-*` files are the train split, the `t10k-*` (test) files the valid split.
    Each may be named `train-images-idx3-ubyte` or `train-images.idx3-ubyte`, with or
    without `.gz`. Pixels are scaled from 0..255 to [0, 1] before normalising. Raises
    `FileNotFoundError` for a missing folder or file, and `ValueError` for a wrong magic
    number, a truncated or damaged file, or image and label counts that differ.
    """
    folder = _folder(path, "mnist_idx", "the folder holding train-images-idx3-ubyte(.gz) and the other 3 MNIST files")
    splits = []
    for images_name, labels_name in _IDX_NAMES:
        images_file, labels_file = _find_idx(folder, images_name), _find_idx(folder, labels_name)
        x, y = _read_idx(images_file, n_dims=3), _read_idx(labels_file, n_dims=1)
        if len(x) != len(y):
            raise ValueError(
                f"{str(images_file)!r} holds {len(x)} images but {str(labels_file)!r} holds {len(y)} labels; "
                "they must come from the same download."
            )
        splits.append((x.unsqueeze(1).float() / 255, y.long()))
    n_classes = int(max(splits[0][1].max(), splits[1][1].max())) + 1
    return _image_data(splits[0], splits[1], [str(i) for i in range(n_classes)], normalize)


def _find_idx(folder: Path, name: str) -> Path:
    dotted = name[: name.rindex("-")] + "." + name[name.rindex("-") + 1 :]  # train-images.idx3-ubyte
    candidates = [folder / n for base in (name, dotted) for n in (base, base + ".gz")]
    for file in candidates:
        if file.is_file():
            return file
    raise FileNotFoundError(
        f"mnist_idx: {str(folder)!r} has no {name!r} (nor {name}.gz, {dotted}, {dotted}.gz); "
        "put the four MNIST IDX files in that folder."
    )


def _read_idx(file: Path, n_dims: int) -> torch.Tensor:
    data = file.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip's magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise ValueError(f"{str(file)!r} is a damaged gzip file ({err}); download it again.") from err
    kind, magic = ("images", 0x803) if n_dims == 3 else ("labels", 0x801)
    header = 4 + 4 * n_dims
    got = int.from_bytes(data[:4], "big")
    if len(data) >= 4 and got != magic:
        raise ValueError(
            f"{str(file)!r} has magic number {got:#010x}, but an IDX file of {kind} starts with {magic:#010x}; "
            "check that it is the MNIST file of that name (images are idx3, labels idx1) and not damaged."
        )
    if len(data) < header:
        raise ValueError(f"{str(file)!r} is truncated: {len(data)} bytes, shorter than an IDX header; download it again.")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims)]
    size = math.prod(dims)
    if size == 0:
        raise ValueError(f"{str(file)!r} holds no {kind}: its header gives shape {dims}; download it again.")
    if len(data) - header != size:
        what = "is longer than its header says" if len(data) - header > size else "is truncated"
        raise ValueError(
            f"{str(file)!r} {what}: the header gives shape {dims} ({size} bytes of {kind}) but the file holds "
            f"{len(data) - header}; download it again."
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def image_folder(path: str | Path, normalize: bool = True) -> ImageData:
    """Read PNG images laid out one folder per class: `path/train/3/*.png`, `path/valid/7/*.png`.

    The classes are the folder names under `train`, sorted (numerically when they are
    all whole numbers, so `10` follows `9`); a label is its class's index in
    `data.classes`. Images are read with Pillow as greyscale and scaled to [0, 1].
    Raises `FileNotFoundError` for a missing folder, and `ValueError` for a class
    folder without PNG images, a valid class that train lacks, an unreadable image,
    or images of different sizes.
    """
    from PIL import Image, UnidentifiedImageError

    folder = _folder(path, "image_folder", "a folder holding train/ and valid/, each with a sub-folder of PNGs per class")
    train_dir = _folder(folder / "train", "image_folder", "train/<class>/*.png")
    class_dirs = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    classes = sorted(class_dirs, key=int) if all(c.isdigit() for c in class_dirs) else class_dirs
    first: tuple[Path, tuple[int, int]] | None = None
    splits = []
    for split in ("train", "valid"):
        split_dir = _folder(folder / split, "image_folder", f"{split}/<class>/*.png")
        xs, ys = [], []
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            if class_dir.name not in classes:
                raise ValueError(
                    f"{str(class_dir)!r} is a class that {str(folder / 'train')!r} lacks (its classes are {classes}); "
                    "add training images for it or remove the folder."
                )
            files = sorted(f for f in class_dir.iterdir() if f.suffix.lower() == ".png")
            if not files:
                raise ValueError(f"{str(class_dir)!r} holds no .png images; add some or remove the empty class folder.")
            for file in files:
                try:
                    with Image.open(file) as opened:
                        image = opened.convert("L")
                except (UnidentifiedImageError, OSError) as err:
                    raise ValueError(f"{str(file)!r} is not a readable image ({err}); replace or remove it.") from err
                first = first or (file, image.size)
                if image.size != first[1]:
                    raise ValueError(
                        f"{str(file)!r} is {image.width}x{image.height} pixels but {str(first[0])!r} is "
                        f"{first[1][0]}x{first[1][1]}; all images must have one size, so resize them first."
                    )
                pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
                xs.append(pixels.reshape(image.height, image.width))
                ys.append(classes.index(class_dir.name))
        if not xs:
            raise ValueError(f"{str(split_dir)!r} holds no class folders; put the images in {split}/<class>/*.png.")
        splits.append((torch.stack(xs).unsqueeze(1).float() / 255, torch.tensor(ys)))
    return _image_data(splits[0], splits[1], classes, normalize)


def _split_tensors(name: str, split: Any) -> list[torch.Tensor]:
    # A bare tensor is a sequence of rows: without this check each row would become a "tensor".
    if isinstance(split, (torch.Tensor, np.ndarray)) or not isinstance(split, (tuple, list)) or not split:
        kind = "tensor" if isinstance(split, torch.Tensor) else "NumPy array"
        got = f"a bare {kind} of shape {tuple(split.shape)}" if hasattr(split, "shape") else repr(split)
        raise TypeError(
            f"DataLoaders.from_tensors: {name} must be a tuple of tensors such as (x, y), got {got}; "
            f"pass the inputs and the targets together, e.g. from_tensors((x_{name}, y_{name}), ...)."
        )
    tensors = []
    for i, item in enumerate(split):
        if isinstance(item, np.ndarray):
            item = torch.as_tensor(item)
        if not isinstance(item, torch.Tensor):
            raise TypeError(
                f"DataLoaders.from_tensors: item {i} of {name} is a {type(item).__name__}, not a tensor or NumPy "
                f"array; convert it first, e.g. torch.as_tensor(...)."
            )
        tensors.append(item)
    return tensors


def _folder(path: str | Path, func: str, expected: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{func}: {str(folder)!r} is not a folder; pass {expected}.")
    return folder


class TensorLoader:
    """Yield batches of in-memory tensors by indexing them with slices of each epoch's order.

    `tensors` is one tensor (each batch is then a tensor) or a tuple or list of tensors
    with one row per sample (each batch is a tuple of matching rows, such as `(xb, yb)`).
    A batch is every tensor indexed with the next `bs` positions of the epoch's order, in
    one indexing call per tensor: no per-sample `__getitem__`, no collate. The tensors
    stay where they are, so a dataset on a GPU yields batches on that GPU, made there.

    With `shuffle`, each epoch's order is `torch.randperm(n_samples, generator=generator)`,
    drawn when the epoch's iteration starts (on the CPU; the one index tensor is moved to
    the data's device per epoch). `generator` is this loader's own `torch.Generator`,
    seeded with `seed`: the same seed gives the same batches whatever else draws random
    numbers, and checkpoints save its state, so a resumed fit shuffles as the straight one
    would have. Without `shuffle` the order is `0, 1, ...`, each batch is a view (a slice)
    of the tensors, and `generator` is `None`. `drop_last` drops a last batch smaller than
    `bs`. `pin_memory` copies each batch of CPU tensors into page-locked memory, so that
    `Device` copies it to CUDA without blocking.

    Raises `TypeError` when `tensors` is not a tensor or a tuple or list of them, and
    `ValueError` for tensors of different lengths or on different devices, a tensor with
    no samples (empty or 0-dimensional), or a `bs` that is not an int >= 1.
    """

    def __init__(self, tensors: torch.Tensor | Sequence[torch.Tensor], bs: int = 64, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, pin_memory: bool = False) -> None:  # fmt: skip
        self._single = isinstance(tensors, torch.Tensor)
        items = (tensors,) if self._single else tuple(tensors) if isinstance(tensors, (tuple, list)) else ()
        if not items or not all(isinstance(t, torch.Tensor) for t in items):
            got = type(tensors).__name__ if not isinstance(tensors, (tuple, list)) else [type(t).__name__ for t in tensors]
            raise TypeError(
                f"TensorLoader takes a tensor or a tuple of tensors with one row per sample, such as (x, y); got {got}."
            )
        for i, t in enumerate(items):
            if t.ndim == 0 or len(t) == 0:
                raise ValueError(
                    f"TensorLoader: tensor {i} holds no samples (shape {tuple(t.shape)}); every tensor needs one row "
                    "per sample along its first dimension, and at least one sample."
                )
        lengths = [len(t) for t in items]
        if len(set(lengths)) != 1:
            raise ValueError(
                f"TensorLoader: the tensors must have one length (one row per sample), got lengths {lengths}; "
                "pass inputs and targets of the same samples."
            )
        devices = [str(t.device) for t in items]
        if len(set(devices)) != 1:
            raise ValueError(
                f"TensorLoader: the tensors must be on one device, got {devices}; move them together, "
                "e.g. (x.to(device), y.to(device))."
            )
        if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            raise ValueError(f"TensorLoader: bs is a number of samples per batch, an int >= 1; got {bs!r}.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"TensorLoader: seed must be an int, got {seed!r}.")
        self.tensors: tuple[torch.Tensor, ...] = items
        self.n_samples, self.bs, self.shuffle, self.drop_last = lengths[0], bs, bool(shuffle), bool(drop_last)
        self.device = items[0].device
        self.pin_memory = bool(pin_memory) and self.device.type == "cpu"
        self.generator: torch.Generator | None = torch.Generator().manual_seed(seed) if shuffle else None

    def __len__(self) -> int:
        """Return the number of batches per epoch."""
        return self.n_samples // self.bs if self.drop_last else -(-self.n_samples // self.bs)

    def take(self, index: torch.Tensor | slice) -> Any:
        """Return the batch of the samples at `index`: a slice, or an int64 tensor on the data's device."""
        if isinstance(index, slice):
            parts = [t[index] for t in self.tensors]
        else:  # index_select: about twice as fast as t[index] on the CPU for rows of hundreds of floats
            parts = [t.index_select(0, index) for t in self.tensors]
        if self.pin_memory:
            parts = [part.pin_memory() for part in parts]
        return parts[0] if self._single else tuple(parts)

    def __iter__(self) -> Iterator[Any]:
        """Yield this epoch's batches; with `shuffle`, draw the epoch's order from `generator` first."""
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[Any]:
        """Return this epoch's batches from batch `start` on, the order drawn now (as `iter` draws it).

        A resumed fit starts the interrupted epoch here: the same order as the
        uninterrupted run, and the batches before `start` are never indexed.
        """
        bs = self.bs
        stop = len(self) * bs if self.drop_last else self.n_samples
        if self.generator is None:
            return (self.take(slice(first, first + bs)) for first in range(start * bs, stop, bs))
        order = torch.randperm(self.n_samples, generator=self.generator)
        if stop == 0:  # drop_last with fewer samples than bs: split would yield one empty index
            return iter(())
        return (self.take(index) for index in order[:stop].to(self.device).split(bs)[start:])

    def __repr__(self) -> str:
        return (f"TensorLoader({self.n_samples} samples, bs={self.bs}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, device={str(self.device)!r})")  # fmt: skip


Loader = DataLoader | TensorLoader


def _check_bs(bs: Any, valid_bs: Any) -> None:
    for name, value in (("bs", bs), ("valid_bs", valid_bs if valid_bs is not None else 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"DataLoaders: {name} is a number of samples per batch, an int >= 1; got {value!r}.")


class DataLoaders:
    """A training and a validation loader (`.train`, `.valid`): what `Learner` takes as `dls`.

    Each is a `TensorLoader` or a torch `DataLoader`; `valid` may be `None` (no validation phase).
    """

    def __init__(self, train: Loader, valid: Loader | None) -> None:
        self.train, self.valid = train, valid

    @classmethod
    def from_datasets(cls, train_ds: Dataset, valid_ds: Dataset | None, bs: int = 64, valid_bs: int | None = None,
                      seed: int = 0, pin_memory: bool | None = None, **kwargs: Any) -> DataLoaders:  # fmt: skip
        """Return torch `DataLoader`s over two map-style datasets.

        `train` shuffles with its own generator seeded by `seed`, so the same seed gives
        the same batches whatever else draws random numbers (and checkpoints save its
        state). `valid` keeps its order, in batches of `valid_bs` (default `2 * bs`:
        without gradients a larger batch fits). `pin_memory` defaults to whether CUDA is
        available, so the `Device` callback's copies can be non-blocking. Other keyword
        arguments (`num_workers`, `drop_last`...) go to both `DataLoader`s.
        """
        _check_bs(bs, valid_bs)
        pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(train_ds, batch_size=bs, shuffle=True, generator=generator, pin_memory=pin, **kwargs)
        valid = None
        if valid_ds is not None:
            valid = DataLoader(valid_ds, batch_size=valid_bs or 2 * bs, pin_memory=pin, **kwargs)
        return cls(train, valid)

    @classmethod
    def from_tensors(cls, train: Sequence[torch.Tensor | np.ndarray], valid: Sequence[torch.Tensor | np.ndarray] | None, bs: int = 64, valid_bs: int | None = None,
                     seed: int = 0, pin_memory: bool | None = None, tensor_loader: bool = True,
                     **kwargs: Any) -> DataLoaders:  # fmt: skip
        """Return loaders over `train` and `valid`, each a tuple of tensors such as `(x, y)`.

        A batch is a tuple of matching rows of the tensors. By default both are
        `TensorLoader`s, which index the tensors in place (on whatever device they are):
        `train` shuffles with its own generator seeded by `seed`, `valid` keeps its order
        in batches of `valid_bs` (default `2 * bs`), `pin_memory` defaults to whether
        CUDA is available, and `drop_last` is the only other keyword they take.
        `tensor_loader=False` gives torch `DataLoader`s over `TensorDataset`s instead,
        with the keyword arguments of `from_datasets` (`num_workers`, `collate_fn`...).
        NumPy arrays are taken too, converted with `torch.as_tensor` (no copy; the
        dtype is kept, so a float64 array gives float64 batches). Raises `ValueError`
        if the tensors of a split differ in length, and `TypeError` if a split is a
        bare tensor or array rather than a tuple of them, or for a `DataLoader`
        keyword given to `TensorLoader`s.
        """
        _check_bs(bs, valid_bs)
        train = _split_tensors("train", train)  # type: ignore[assignment]  # a list of tensors now
        valid = None if valid is None else _split_tensors("valid", valid)  # type: ignore[assignment]
        for name, tensors in (("train", train), ("valid", valid)):
            if tensors is not None and len({len(t) for t in tensors}) != 1:
                raise ValueError(
                    f"DataLoaders.from_tensors: the {name} tensors must have one length (one row per sample), "
                    f"got lengths {[len(t) for t in tensors]}; pass inputs and targets of the same samples."
                )
        if not tensor_loader:
            datasets = [None if tensors is None else TensorDataset(*tensors) for tensors in (train, valid)]
            return cls.from_datasets(datasets[0], datasets[1], bs, valid_bs, seed, pin_memory, **kwargs)  # type: ignore[arg-type]  # train is never None
        unknown = sorted(set(kwargs) - {"drop_last"})
        if unknown:
            raise TypeError(
                f"DataLoaders.from_tensors: {unknown} are torch DataLoader settings, and these loaders are "
                "TensorLoaders, which index the tensors in the main process; pass tensor_loader=False to get "
                "DataLoaders that take them."
            )
        drop_last = bool(kwargs.get("drop_last", False))
        pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        train_dl = TensorLoader(tuple(train), bs, shuffle=True, drop_last=drop_last, seed=seed, pin_memory=pin)
        valid_dl = None
        if valid is not None:
            valid_dl = TensorLoader(tuple(valid), valid_bs or 2 * bs, drop_last=drop_last, pin_memory=pin)
        return cls(train_dl, valid_dl)

    def __repr__(self) -> str:
        sizes = [None if dl is None else _n_samples(dl) for dl in (self.train, self.valid)]
        return f"DataLoaders(train={sizes[0]} samples, valid={sizes[1]} samples)"


def _n_samples(dl: Loader) -> int:
    return dl.n_samples if isinstance(dl, TensorLoader) else len(dl.dataset)  # type: ignore[arg-type]

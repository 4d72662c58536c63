"""The data helpers: embedded digits, MNIST IDX files, PNG class folders, TensorLoader, DataLoaders.

The IDX files and PNG folders are tiny fixtures written here, into tmp_path.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from loopkit import DataLoaders, Learner, TensorLoader, digits, image_folder, mnist_idx
from tests.conftest import make_data, tiny_model

IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def idx_bytes(values: torch.Tensor) -> bytes:
    """Encode a uint8 tensor as an IDX file: magic 0x0000 08 <ndim>, big-endian sizes, the data."""
    header = bytes([0, 0, 8, values.ndim]) + b"".join(d.to_bytes(4, "big") for d in values.shape)
    return header + bytes(values.flatten().tolist())


def mnist_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Return small random MNIST-like contents for the four files: 6 train and 4 valid 5x4 images."""
    gen = torch.Generator().manual_seed(seed)
    images = lambda n: torch.randint(0, 256, (n, 5, 4), generator=gen, dtype=torch.uint8)
    return {
        IDX_NAMES[0]: images(6), IDX_NAMES[1]: torch.tensor([0, 1, 2, 3, 9, 1], dtype=torch.uint8),
        IDX_NAMES[2]: images(4), IDX_NAMES[3]: torch.tensor([3, 0, 1, 2], dtype=torch.uint8),
    }  # fmt: skip


def write_mnist(folder: Path, gz: bool, tensors: dict[str, torch.Tensor] | None = None, dotted: bool = False) -> Path:
    """Write the four IDX files into `folder`, gzipped or not; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in (tensors or mnist_tensors()).items():
        if dotted:
            name = name[: name.rindex("-")] + "." + name[name.rindex("-") + 1 :]
        data = idx_bytes(values)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return folder


def write_png(path: Path, pixels: torch.Tensor) -> None:
    """Write a uint8 (H, W) tensor as a greyscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("L", (pixels.shape[1], pixels.shape[0]), bytes(pixels.flatten().tolist())).save(path)


def write_folders(root: Path, layout: dict[str, dict[str, int]], size: tuple[int, int] = (3, 2)) -> dict:
    """Write `layout` (split -> class -> number of images) as PNGs; return split -> list of (class, pixels)."""
    gen = torch.Generator().manual_seed(0)
    written: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for split, classes in layout.items():
        written[split] = []
        for name, count in sorted(classes.items()):
            for i in range(count):
                pixels = torch.randint(0, 256, size, generator=gen, dtype=torch.uint8)
                write_png(root / split / name / f"{i}.png", pixels)
                written[split].append((name, pixels))
    return written


# -- mnist_idx ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
@pytest.mark.parametrize("dotted", [False, True], ids=["dashed", "dotted"])
def test_mnist_idx_reads_the_four_files_gzipped_or_not(tmp_path, gz, dotted):
    tensors = mnist_tensors()
    data = mnist_idx(write_mnist(tmp_path, gz, dotted=dotted), normalize=False)
    x, y = data.train
    assert x.shape == (6, 1, 5, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, tensors[IDX_NAMES[0]].unsqueeze(1).float() / 255)
    assert y.tolist() == [0, 1, 2, 3, 9, 1]
    assert torch.equal(data.valid[0], tensors[IDX_NAMES[2]].unsqueeze(1).float() / 255)
    assert data.valid[1].tolist() == [3, 0, 1, 2]
    assert data.classes == [str(i) for i in range(10)]
    assert data.mean is None and data.std is None


def test_mnist_idx_normalises_with_the_training_split_only(tmp_path):
    tensors = mnist_tensors()
    data = mnist_idx(write_mnist(tmp_path / "a", gz=False, tensors=tensors))
    raw_train = tensors[IDX_NAMES[0]].unsqueeze(1).float() / 255
    raw_valid = tensors[IDX_NAMES[2]].unsqueeze(1).float() / 255
    assert torch.allclose(data.mean, raw_train.mean(0)) and torch.allclose(data.std, raw_train.std(0))
    assert torch.allclose(data.valid[0], (raw_valid - raw_train.mean(0)) / raw_train.std(0))
    # Other validation images change nothing on the training side.
    tensors[IDX_NAMES[2]] = 255 - tensors[IDX_NAMES[2]]
    other = mnist_idx(write_mnist(tmp_path / "b", gz=False, tensors=tensors))
    assert torch.equal(other.train[0], data.train[0]) and torch.equal(other.mean, data.mean)


def test_a_pixel_constant_in_training_is_centred_not_divided_by_zero(tmp_path):
    tensors = mnist_tensors()
    tensors[IDX_NAMES[0]][:, 0, 0] = 7
    data = mnist_idx(write_mnist(tmp_path, gz=False, tensors=tensors))
    assert data.std[0, 0, 0] == 1
    assert torch.allclose(data.valid[0][:, 0, 0, 0], (tensors[IDX_NAMES[2]][:, 0, 0].float() - 7) / 255)


def test_mnist_idx_missing_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="'.*nowhere' is not a folder"):
        mnist_idx(tmp_path / "nowhere")
    folder = write_mnist(tmp_path / "mnist", gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="has no 't10k-labels-idx1-ubyte'"):
        mnist_idx(folder)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_mnist_idx_truncated_file(tmp_path, gz):
    folder = write_mnist(tmp_path, gz=False)
    file = folder / IDX_NAMES[2]
    data = file.read_bytes()[:-5]
    file.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte' is truncated: .*\[4, 5, 4\] \(80 bytes .* holds 75"):
        mnist_idx(folder)


def test_mnist_idx_damaged_gzip_and_headers(tmp_path):
    folder = write_mnist(tmp_path, gz=True)
    gz_file = folder / (IDX_NAMES[0] + ".gz")
    gz_file.write_bytes(gz_file.read_bytes()[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz' is a damaged gzip file"):
        mnist_idx(folder)
    gz_file.write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00"))
    with pytest.raises(ValueError, match="is truncated: 6 bytes, shorter than an IDX header"):
        mnist_idx(folder)
    gz_file.write_bytes(gzip.compress(idx_bytes(torch.zeros(6, 5, 4, dtype=torch.uint8)) + b"\x00"))
    with pytest.raises(ValueError, match="is longer than its header says"):
        mnist_idx(folder)


def test_mnist_idx_wrong_magic_number(tmp_path):
    tensors = mnist_tensors()
    tensors[IDX_NAMES[0]], tensors[IDX_NAMES[1]] = tensors[IDX_NAMES[1]], tensors[IDX_NAMES[0]]  # images <-> labels
    folder = write_mnist(tmp_path, gz=False, tensors=tensors)
    message = "train-images-idx3-ubyte' has magic number 0x00000801, .* images starts with 0x00000803"
    with pytest.raises(ValueError, match=message):
        mnist_idx(folder)


def test_mnist_idx_counts_must_match(tmp_path):
    tensors = mnist_tensors()
    tensors[IDX_NAMES[3]] = tensors[IDX_NAMES[3]][:3]
    with pytest.raises(ValueError, match="holds 4 images but .*t10k-labels-idx1-ubyte' holds 3 labels"):
        mnist_idx(write_mnist(tmp_path, gz=False, tensors=tensors))


# -- image_folder -------------------------------------------------------------------------------


def test_image_folder_reads_pixels_and_labels_from_folder_names(tmp_path):
    written = write_folders(tmp_path, {"train": {"3": 2, "7": 3, "10": 1}, "valid": {"7": 2, "3": 1}})
    data = image_folder(tmp_path, normalize=False)
    assert data.classes == ["3", "7", "10"]  # numeric names sort as numbers
    for split, (x, y) in (("train", data.train), ("valid", data.valid)):
        # Folders are read in name order, files in name order inside each.
        expected = sorted(written[split], key=lambda item: item[0])
        assert x.shape == (len(expected), 1, 3, 2)
        assert y.tolist() == [data.classes.index(name) for name, _ in expected]
        assert torch.equal(x, torch.stack([p for _, p in expected]).unsqueeze(1).float() / 255)


def test_image_folder_names_classes_in_alphabetical_order_and_normalises(tmp_path):
    write_folders(tmp_path, {"train": {"two": 2, "one": 2}, "valid": {"two": 1}})
    data = image_folder(tmp_path)
    raw = image_folder(tmp_path, normalize=False)
    assert data.classes == ["one", "two"]
    assert torch.allclose(data.mean, raw.train[0].mean(0))
    assert torch.allclose(data.valid[0], (raw.valid[0] - raw.train[0].mean(0)) / raw.train[0].std(0))


def test_image_folder_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="'.*nowhere' is not a folder"):
        image_folder(tmp_path / "nowhere")
    write_folders(tmp_path, {"train": {"3": 1}})
    with pytest.raises(FileNotFoundError, match="'.*valid' is not a folder; pass valid/<class>/\\*.png"):
        image_folder(tmp_path)


def test_image_folder_empty_class_folder(tmp_path):
    write_folders(tmp_path, {"train": {"3": 1, "7": 1}, "valid": {"3": 1}})
    (tmp_path / "valid" / "7").mkdir()
    (tmp_path / "valid" / "7" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="valid/7' holds no .png images"):
        image_folder(tmp_path)


def test_image_folder_images_of_different_sizes(tmp_path):
    write_folders(tmp_path, {"train": {"3": 2}, "valid": {"3": 1}})
    write_png(tmp_path / "valid" / "3" / "wide.png", torch.zeros(3, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="valid/3/wide.png' is 5x3 pixels but .*train/3/0.png' is 2x3"):
        image_folder(tmp_path)


def test_image_folder_unknown_class_unreadable_image_and_no_classes(tmp_path):
    write_folders(tmp_path, {"train": {"3": 1}, "valid": {"8": 1}})
    with pytest.raises(ValueError, match="valid/8' is a class that .*train' lacks"):
        image_folder(tmp_path)
    write_folders(tmp_path / "b", {"train": {"3": 1}, "valid": {"3": 1}})
    (tmp_path / "b" / "train" / "3" / "1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="train/3/1.png' is not a readable image"):
        image_folder(tmp_path / "b")
    (tmp_path / "c" / "train").mkdir(parents=True)
    (tmp_path / "c" / "valid").mkdir()
    with pytest.raises(ValueError, match="train' holds no class folders"):
        image_folder(tmp_path / "c")


# -- digits -------------------------------------------------------------------------------------


def test_digits_split_is_fixed_seeded_and_disjoint():
    torch.manual_seed(1)
    first = digits(normalize=False)
    torch.manual_seed(2)  # the global RNG does not move the split
    again = digits(normalize=False)
    assert first.train[0].shape == (1438, 1, 8, 8) and first.valid[0].shape == (359, 1, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(first.train + first.valid, again.train + again.valid))
    assert first.valid[1][:10].tolist() == [6, 5, 5, 7, 9, 9, 8, 4, 6, 8]  # pinned: the split must not drift
    other = digits(seed=1, normalize=False)
    assert not torch.equal(other.valid[1], first.valid[1])
    # Together the splits hold every image exactly once: compare sorted row keys with sklearn's.
    from sklearn.datasets import load_digits

    everything = torch.tensor(load_digits().images, dtype=torch.float32) / 16
    keys = lambda x: sorted(map(tuple, x.reshape(len(x), -1).tolist()))
    assert keys(torch.cat([first.train[0], first.valid[0]]).squeeze(1)) == keys(everything)
    assert len(digits(valid_pct=0.5, normalize=False).valid[1]) == 898


def test_digits_normalises_with_training_statistics_only():
    raw, data = digits(normalize=False), digits()
    assert torch.allclose(data.mean, raw.train[0].mean(0))
    std = raw.train[0].std(0)
    assert torch.allclose(data.std, torch.where(std > 1e-6, std, torch.ones_like(std)))
    assert torch.allclose(data.valid[0], (raw.valid[0] - data.mean) / data.std)
    assert data.train[0].mean(0).abs().max() < 1e-5  # centred on the training split...
    assert data.valid[0].mean(0).abs().max() > 1e-2  # ...which the valid split is not, exactly


def test_digits_without_scikit_learn_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'loopkit\[recipes\]'"):
        digits()


def test_digits_rejects_a_bad_valid_pct():
    with pytest.raises(ValueError, match=r"valid_pct, .* must be in \(0, 1\), e.g. 0.2; got 1.5"):
        digits(valid_pct=1.5)


# -- DataLoaders --------------------------------------------------------------------------------


def samples(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n) % 3


def test_from_tensors_shuffles_train_with_a_seeded_generator_and_keeps_valid_in_order():
    train, valid = samples(50), samples(30)
    order = lambda dl: torch.cat([xb.squeeze(1) for xb, _ in dl]).long().tolist()
    dls = DataLoaders.from_tensors(train, valid, bs=8, seed=3)
    first = order(dls.train)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert order(dls.train) != first  # a new epoch, a new order
    torch.manual_seed(123)  # the global RNG does not change the shuffle
    assert order(DataLoaders.from_tensors(train, valid, bs=8, seed=3).train) == first
    assert order(DataLoaders.from_tensors(train, valid, bs=8, seed=4).train) != first
    assert [len(yb) for _, yb in dls.train] == [8] * 6 + [2]
    assert [len(yb) for _, yb in dls.valid] == [16, 14]  # valid batches are twice as big
    assert order(dls.valid) == list(range(30))
    assert [len(yb) for _, yb in DataLoaders.from_tensors(train, valid, bs=8, valid_bs=25).valid] == [25, 5]


def test_pin_memory_follows_cuda(monkeypatch):
    train = samples()
    assert DataLoaders.from_tensors(train, train).train.pin_memory == torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dls = DataLoaders.from_tensors(train, train)
    assert dls.train.pin_memory and dls.valid.pin_memory
    assert not DataLoaders.from_tensors(train, train, pin_memory=False).train.pin_memory


def test_learner_takes_dataloaders_as_dls():
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()
    dls = DataLoaders.from_tensors((x[:48], y[:48]), (x[48:], y[48:]), bs=16)
    learn = Learner(torch.nn.Linear(2, 2), dls, F.cross_entropy, lr=0.5)
    learn.progress_bar.enabled = False
    learn.fit(2)
    assert learn.avg_stats.valid.count == 16 and learn.avg_stats.train.count == 48
    assert DataLoaders.from_tensors((x, y), None).valid is None


def test_from_tensors_takes_numpy_arrays():
    x, y = (t.numpy() for t in samples(20))
    dls = DataLoaders.from_tensors((x, y), (x[:6], y[:6]), bs=8, seed=3)
    xb, yb = next(iter(dls.train))
    assert isinstance(xb, torch.Tensor) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert [len(b) for _, b in dls.train] == [8, 8, 4] and torch.equal(next(iter(dls.valid))[0], torch.as_tensor(x[:6]))
    torch_order = [b.tolist() for _, b in DataLoaders.from_tensors(samples(20), None, bs=8, seed=3).train]
    assert [b.tolist() for _, b in DataLoaders.from_tensors((x, y), None, bs=8, seed=3).train] == torch_order


@pytest.mark.parametrize("bare", [samples()[0], samples()[0].numpy()], ids=["tensor", "array"])
def test_from_tensors_says_to_pass_a_pair_when_given_a_bare_tensor(bare):
    with pytest.raises(TypeError, match=r"train must be a tuple of tensors such as \(x, y\), got a bare .* of shape "
                                        r"\(50, 1\); pass the inputs and the targets together"):
        DataLoaders.from_tensors(bare, None)
    with pytest.raises(TypeError, match=r"valid must be a tuple .* got a bare"):
        DataLoaders.from_tensors(samples(), bare)
    with pytest.raises(TypeError, match=r"item 1 of train is a list, not a tensor or NumPy array; convert it first"):
        DataLoaders.from_tensors((bare, [0] * 50), None)


def test_dataloaders_bad_input():
    with pytest.raises(ValueError, match="bs is a number of samples per batch, an int >= 1; got 0"):
        DataLoaders.from_tensors(samples(), None, bs=0)
    with pytest.raises(ValueError, match="valid_bs .* got 2.5"):
        DataLoaders.from_tensors(samples(), None, valid_bs=2.5)
    with pytest.raises(ValueError, match=r"the valid tensors must have one length .* got lengths \[50, 49\]"):
        DataLoaders.from_tensors(samples(), (torch.zeros(50), torch.zeros(49)))


# -- TensorLoader ---------------------------------------------------------------------------------


def seen(dl) -> list[int]:
    """Return the sample ids a loader over `samples()` yields in one epoch, in order."""
    return torch.cat([xb.squeeze(1) for xb, _ in dl]).long().tolist()


@given(n=st.integers(1, 40), bs=st.integers(1, 12), drop_last=st.booleans(), seed=st.integers(0, 2**31))
@example(n=1, bs=2, drop_last=True, seed=0)  # fewer samples than bs with drop_last: no batch, not an empty one
def test_tensor_loader_follows_its_seeded_permutation_and_sees_every_sample_once(n, bs, drop_last, seed):
    dl = TensorLoader(samples(n), bs=bs, shuffle=True, drop_last=drop_last, seed=seed)
    reference = torch.Generator().manual_seed(seed)
    n_kept = n - n % bs if drop_last else n
    assert len(dl) == (n // bs if drop_last else -(-n // bs))
    for _ in range(3):  # each epoch draws the next permutation from the loader's own generator
        order = torch.randperm(n, generator=reference)[:n_kept].tolist()
        batches = list(dl)
        assert len(batches) == len(dl)
        assert [len(yb) for _, yb in batches] == [min(bs, n_kept - start) for start in range(0, n_kept, bs)]
        assert (seen(batches) if batches else []) == order
        assert all(torch.equal(yb, xb.squeeze(1).long() % 3) for xb, yb in batches)  # rows stay paired
        if not drop_last:
            assert sorted(order) == list(range(n))


def test_tensor_loader_in_order_yields_views_and_a_single_tensor_yields_tensors():
    x, y = samples(10)
    dl = TensorLoader((x, y), bs=4)
    assert dl.generator is None and seen(dl) == list(range(10)) == seen(dl)
    first_x, first_y = next(iter(dl))
    assert first_x.data_ptr() == x.data_ptr() and first_y.data_ptr() == y.data_ptr()  # a slice, no copy
    alone = TensorLoader(x, bs=4, shuffle=True)
    assert all(isinstance(b, torch.Tensor) for b in alone) and [len(b) for b in alone] == [4, 4, 2]
    assert isinstance(next(iter(TensorLoader([x, y]))), tuple)


def test_the_global_rng_does_not_change_the_shuffle():
    torch.manual_seed(1)
    first = seen(TensorLoader(samples(30), bs=8, shuffle=True, seed=5))
    torch.manual_seed(2)
    assert seen(TensorLoader(samples(30), bs=8, shuffle=True, seed=5)) == first
    assert seen(TensorLoader(samples(30), bs=8, shuffle=True, seed=6)) != first


def test_tensor_loader_bad_input():
    x, y = samples(10)
    with pytest.raises(ValueError, match=r"one length .* got lengths \[10, 9\]"):
        TensorLoader((x, y[:9]))
    with pytest.raises(ValueError, match=r"tensor 1 holds no samples \(shape \(0,\)\)"):
        TensorLoader((x, y[:0]))
    with pytest.raises(ValueError, match=r"tensor 0 holds no samples \(shape \(\)\)"):
        TensorLoader(torch.tensor(3.0))
    for bs in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=f"bs is a number of samples per batch, an int >= 1; got {bs!r}"):
            TensorLoader((x, y), bs=bs)
    with pytest.raises(TypeError, match=r"a tensor or a tuple of tensors .* got \['Tensor', 'list'\]"):
        TensorLoader((x, [0] * 10))
    with pytest.raises(TypeError, match="got ndarray"):
        TensorLoader(x.numpy())
    with pytest.raises(TypeError, match=r"got \[\]"):
        TensorLoader(())
    with pytest.raises(ValueError, match=r"on one device, got \['cpu', 'meta'\]"):
        TensorLoader((x, y.to("meta")))


def raw_fit(x, y, n_epochs, bs, seed, lr=0.5):
    """Train the tiny model with a hand-written loop over the seeded permutations; return its parameters."""
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n_epochs):
        for index in torch.randperm(len(x), generator=gen).split(bs):
            F.cross_entropy(model(x[index]), y[index]).backward()
            opt.step()
            opt.zero_grad()
    return list(model.parameters())


def test_a_fit_over_a_tensor_loader_equals_the_raw_loop_on_the_same_permutations():
    x, y = make_data(37)
    learn = Learner(tiny_model(), (TensorLoader((x, y), bs=8, shuffle=True, seed=4), None), F.cross_entropy, lr=0.5)
    learn.progress_bar.enabled = False
    learn.fit(3)
    for got, want in zip(learn.model.parameters(), raw_fit(x, y, 3, 8, seed=4)):
        assert torch.equal(got, want)
    assert learn.avg_stats.train.count == 37


def test_get_preds_over_a_tensor_loader_returns_samples_in_loader_order():
    x, y = make_data(21)
    learn = Learner(tiny_model(), (TensorLoader((x, y), bs=4), TensorLoader((x, y), bs=5)), F.cross_entropy)
    inp, pred, targ = learn.get_preds(with_input=True)
    assert torch.equal(inp, x) and torch.equal(targ, y)
    torch.testing.assert_close(pred, learn.model(x).detach())
    shuffled = TensorLoader((x, y), bs=4, shuffle=True, seed=9)
    order = torch.randperm(21, generator=torch.Generator().manual_seed(9))
    inp, _, targ = learn.get_preds(shuffled, with_input=True)  # this evaluation's epoch of the loader
    assert torch.equal(inp, x[order]) and torch.equal(targ, y[order])


def test_lr_find_and_checkpoints_keep_the_tensor_loaders_generator(tmp_path):
    from loopkit.callbacks.checkpoint import rng_state  # tests reach this helper to see what a checkpoint holds

    x, y = make_data(40)
    dl = TensorLoader((x, y), bs=8, shuffle=True, seed=2)
    learn = Learner(tiny_model(), (dl, TensorLoader((x, y), bs=16)), F.cross_entropy)
    learn.progress_bar.enabled = False
    before = dl.generator.get_state()
    learn.lr_find(num_it=12)  # shuffles 3 epochs, then puts the generator back
    assert torch.equal(dl.generator.get_state(), before)
    assert [torch.equal(s, before) for s in rng_state(learn)["loaders"]] == [True]
    learn.save(tmp_path / "ckpt.pt")
    expected = seen(dl)
    dl.generator.manual_seed(123)
    learn.load(tmp_path / "ckpt.pt")
    assert seen(dl) == expected


def test_gradient_accumulation_over_a_tensor_loader_equals_the_bigger_batch():
    from loopkit.callbacks import GradientAccumulation

    x, y = make_data(23)
    params = []
    for bs, cbs in ((5, [GradientAccumulation(10)]), (10, [])):
        learn = Learner(tiny_model(), (TensorLoader((x, y), bs=bs, shuffle=True), None), F.cross_entropy, lr=0.5, cbs=cbs)
        learn.progress_bar.enabled = False
        learn.fit(2)  # micro-batches 5, 5 | 5, 5 | 3: windows of 10, 10 and 3, as batches of 10, 10, 3
        params.append(list(learn.model.parameters()))
    for got, want in zip(*params):
        torch.testing.assert_close(got, want)


def test_from_tensors_gives_tensor_loaders_unless_asked_for_dataloaders():
    from torch.utils.data import DataLoader

    dls = DataLoaders.from_tensors(samples(50), samples(30), bs=8, seed=3, drop_last=True)
    assert isinstance(dls.train, TensorLoader) and isinstance(dls.valid, TensorLoader)
    assert (dls.train.shuffle, dls.valid.shuffle, len(dls.train), len(dls.valid)) == (True, False, 6, 1)
    assert seen(dls.train) == torch.randperm(50, generator=torch.Generator().manual_seed(3))[:48].tolist()
    assert repr(dls) == "DataLoaders(train=50 samples, valid=30 samples)"
    torch_dls = DataLoaders.from_tensors(samples(50), samples(30), bs=8, tensor_loader=False, num_workers=0)
    assert isinstance(torch_dls.train, DataLoader) and isinstance(torch_dls.valid, DataLoader)
    with pytest.raises(TypeError, match=r"\['num_workers'\] are torch DataLoader settings.* tensor_loader=False"):
        DataLoaders.from_tensors(samples(50), None, num_workers=2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_dataset_on_the_gpu_yields_gpu_batches():
    x, y = (t.cuda() for t in make_data(40))
    learn = Learner(tiny_model().cuda(), (TensorLoader((x, y), bs=8, shuffle=True), TensorLoader((x, y), bs=16)),
                    F.cross_entropy)  # fmt: skip
    assert all(xb.is_cuda and yb.is_cuda for xb, yb in learn.train_dl)
    learn.progress_bar.enabled = False
    learn.fit(1)
    assert learn.avg_stats.valid.count == 40

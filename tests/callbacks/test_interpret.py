"""ClassificationInterpretation: confusion matrix, most confused, top losses and their plots, against hand counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from torch import nn

from loopkit import Learner
from loopkit.callbacks import ClassificationInterpretation
from tests.conftest import N_CLASSES, Tracer, batches_of, make_data, tiny_model

PNG = b"\x89PNG\r\n\x1a\n"


def trained_learner(valid_sizes=(7, 9, 8), seed=0) -> Learner:
    """A learner on the synthetic data, trained one epoch: some right, some wrong predictions."""
    x, y = make_data(24 + sum(valid_sizes), seed=seed)
    dls = (batches_of(x[:24], y[:24], [8, 8, 8]), batches_of(x[24:], y[24:], list(valid_sizes)))
    learn = Learner(tiny_model(), dls, F.cross_entropy, lr=0.1)
    learn.progress_bar.enabled = False
    learn.fit(1)
    return learn


def valid_tensors(learn: Learner) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The valid inputs, targets and the model's logits on them, by hand."""
    x = torch.cat([xb for xb, _ in learn.dls[1]])
    y = torch.cat([yb for _, yb in learn.dls[1]])
    with torch.no_grad():
        return x, y, learn.model(x)


def from_classes(preds: list[int], targs: list[int], n_classes: int, **kwargs) -> ClassificationInterpretation:
    """An interpretation whose predicted classes are `preds` (scores one-hot-ish at them)."""
    probs = torch.full((len(preds), n_classes), 0.1 / (n_classes - 1))
    probs[torch.arange(len(preds)), torch.tensor(preds)] = 0.9
    targ = torch.tensor(targs)
    losses = F.nll_loss(probs.log(), targ, reduction="none")
    return ClassificationInterpretation(torch.zeros(len(preds), 2), probs, targ, losses, **kwargs)


def test_from_learner_keeps_inputs_probabilities_targets_and_losses_from_one_evaluation():
    learn = trained_learner()
    x, y, logits = valid_tensors(learn)
    tracer = Tracer()
    learn.add_cbs(tracer)
    interp = ClassificationInterpretation.from_learner(learn)
    assert tracer.trace.count("before_validate") == 1  # one pass over the loader
    assert torch.equal(interp.inputs, x) and torch.equal(interp.targs, y)
    assert torch.allclose(interp.probs, logits.softmax(1))
    assert torch.allclose(interp.losses, F.cross_entropy(logits, y, reduction="none"))
    assert torch.equal(interp.preds, logits.argmax(1))
    sigmoid = ClassificationInterpretation.from_learner(learn, act=torch.sigmoid)
    assert torch.allclose(sigmoid.probs, logits.sigmoid())


def test_confusion_matrix_equals_a_hand_count_and_sklearn():
    learn = trained_learner()
    _, y, logits = valid_tensors(learn)
    pred = logits.argmax(1)
    matrix = ClassificationInterpretation.from_learner(learn).confusion_matrix()
    by_hand = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.long)
    for actual, predicted in zip(y.tolist(), pred.tolist()):
        by_hand[actual, predicted] += 1
    assert torch.equal(matrix, by_hand)
    assert 0 < by_hand.trace() < len(y)  # the test sees both right and wrong predictions
    assert matrix.tolist() == sklearn_confusion_matrix(y, pred, labels=range(N_CLASSES)).tolist()
    # Rows are the actual class: a class never predicted is an empty column, not an empty row.
    interp = from_classes(preds=[0, 0, 0, 1], targs=[0, 2, 2, 1], n_classes=3)
    assert interp.confusion_matrix().tolist() == [[1, 0, 0], [0, 1, 0], [2, 0, 0]]


def test_most_confused_lists_mistakes_by_count_with_class_names():
    #          actual 2 -> 1 three times, 0 -> 1 twice, 1 -> 0 twice, 0 -> 2 once; 3 right
    preds = [1, 1, 1, 1, 1, 0, 0, 2, 0, 1, 2]
    targs = [2, 2, 2, 0, 0, 1, 1, 0, 0, 1, 2]
    interp = from_classes(preds, targs, n_classes=3)
    assert interp.most_confused() == [(2, 1, 3), (0, 1, 2), (1, 0, 2), (0, 2, 1)]  # equal counts in class order
    assert interp.most_confused(k=2) == [(2, 1, 3), (0, 1, 2)]
    assert interp.most_confused(min_val=2) == [(2, 1, 3), (0, 1, 2), (1, 0, 2)]
    named = from_classes(preds, targs, n_classes=3, vocab=["cat", "dog", "fox"])
    assert named.most_confused(k=1) == [("fox", "dog", 3)]
    assert from_classes([0, 1], [0, 1], n_classes=2).most_confused() == []  # no mistakes, nothing listed


def test_top_losses_equal_sorting_cross_entropy_by_hand():
    learn = trained_learner()
    _, y, logits = valid_tensors(learn)
    losses = F.cross_entropy(logits, y, reduction="none").tolist()
    order = sorted(range(len(losses)), key=lambda i: -losses[i])
    top = ClassificationInterpretation.from_learner(learn).top_losses(5)
    assert top.indices.tolist() == order[:5]
    assert top.values.tolist() == pytest.approx([losses[i] for i in order[:5]])
    values, indices = ClassificationInterpretation.from_learner(learn).top_losses(1000)  # more than there are: all
    assert len(values) == len(y) and indices.tolist() == order


def test_plot_top_losses_titles_say_predicted_actual_loss_and_probability(tmp_path):
    learn = trained_learner()
    _, y, logits = valid_tensors(learn)
    names = ["ant", "bee", "cow"]
    interp = ClassificationInterpretation.from_learner(learn, vocab=names)
    fig = interp.plot_top_losses(k=4, path=tmp_path / "top.png")
    assert isinstance(fig, Figure)
    losses = F.cross_entropy(logits, y, reduction="none")
    probs = logits.softmax(1)
    titles = [ax.get_title() for ax in fig.axes]
    expected = []
    for i in losses.argsort(descending=True)[:4].tolist():
        pred = int(logits[i].argmax())
        expected.append(f"{names[pred]}/{names[int(y[i])]} / {losses[i]:.2f} / {probs[i, pred]:.2f}")
    assert titles == expected
    assert all(ax.patches and not ax.images for ax in fig.axes)  # 4 features: bars, not images
    assert (tmp_path / "top.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("shape, drawn_as_image", [((1, 5, 6), True), ((3, 5, 6), True), ((5, 6), True),
                                                   ((2, 5, 6), False), ((40,), False)])  # fmt: skip
def test_plot_top_losses_draws_images_and_other_samples_as_plots(shape, drawn_as_image):
    inputs = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    targs = torch.tensor([1, 1, 0])
    interp = ClassificationInterpretation(inputs, probs, targs, F.nll_loss(probs.log(), targs, reduction="none"))
    fig = interp.plot_top_losses(k=2)
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == f"0/1 / {-torch.tensor(0.3).log():.2f} / 0.70"
    assert all(bool(ax.images) == drawn_as_image for ax in fig.axes)


def test_plot_confusion_matrix_shows_counts_or_row_fractions_and_saves(tmp_path):
    interp = from_classes(preds=[1, 1, 1, 0, 1], targs=[2, 2, 2, 0, 0], n_classes=3, vocab=["a", "b", "c"])
    fig = interp.plot_confusion_matrix(path=tmp_path / "confusion.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["1", "1", "0", "0", "0", "0", "0", "3", "0"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "actual"
    assert (tmp_path / "confusion.png").read_bytes()[:8] == PNG
    normalized = interp.plot_confusion_matrix(normalize=True).axes[0]
    assert [t.get_text() for t in normalized.texts] == ["0.50", "0.50", "0.00", "0.00", "0.00", "0.00", "0.00", "1.00", "0.00"]


def regression_learner(n_outputs: int | None) -> Learner:
    x, _ = make_data(16)
    y = x.sum(1, keepdim=n_outputs is not None)
    model = nn.Linear(4, 1) if n_outputs else nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
    return Learner(model, (batches_of(x, y, [8, 8]), batches_of(x, y, [8, 8])), F.mse_loss, default_cbs=False)


@pytest.mark.parametrize("n_outputs", [None, 1])
def test_regression_outputs_are_refused_at_the_first_batch(n_outputs):
    learn = regression_learner(n_outputs)
    tracer = Tracer()
    learn.add_cbs(tracer)
    with pytest.raises(ValueError, match=r"interpretation needs class scores.*have shape \[8(, 1)?\]"):
        ClassificationInterpretation.from_learner(learn)
    assert tracer.trace.count("before_batch") == 1  # stopped at the first batch, not after the pass


def test_targets_that_are_not_class_indices_are_refused():
    x, y = make_data(16)
    one_hot = F.one_hot(y, N_CLASSES).float()
    learn = Learner(tiny_model(), (batches_of(x, one_hot, [8, 8]),) * 2, F.cross_entropy, default_cbs=False)
    with pytest.raises(ValueError, match=r"targets must be integer class indices.*torch.float32 of shape \[8, 3\].*argmax"):
        ClassificationInterpretation.from_learner(learn)
    probs = torch.full((3, 2), 0.5)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\).*from 0 to 5"):
        ClassificationInterpretation(None, probs, torch.tensor([0, 1, 5]), torch.zeros(3))
    with pytest.raises(ValueError, match=r"integer class indices.*got torch.float32 of shape \[3\]"):
        ClassificationInterpretation(None, probs, torch.tensor([0.0, 1.0, 1.0]), torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \[N\] with N = 3; got torch.int64 of shape \[2\]"):
        ClassificationInterpretation(None, probs, torch.tensor([0, 1]), torch.zeros(3))


def test_a_loader_without_targets_is_refused():
    learn = trained_learner()
    inputs_only = [xb for xb, _ in learn.dls[1]]  # bare tensors, as get_preds accepts
    with pytest.raises(ValueError, match="interpretation needs targets.*yields \\(x, y\\)"):
        ClassificationInterpretation.from_learner(learn, dl=inputs_only)


def test_bad_arguments_say_what_to_pass():
    interp = from_classes([0, 1, 1], [0, 1, 0], n_classes=2)
    for call in (interp.top_losses, interp.most_confused, interp.plot_top_losses):
        with pytest.raises(ValueError, match=r"k is how many to return, an int >= 1; got 0"):
            call(k=0)
    with pytest.raises(ValueError, match="min_val .* int >= 1; got 0"):
        interp.most_confused(min_val=0)
    with pytest.raises(ValueError, match="vocab names 3 classes but the outputs score 2"):
        from_classes([0, 1], [0, 1], n_classes=2, vocab=["a", "b", "c"])
    with pytest.raises(ValueError, match="losses must be one loss per sample, shape \\[2\\]"):
        ClassificationInterpretation(None, torch.full((2, 2), 0.5), torch.tensor([0, 1]), torch.tensor(0.3))
    with pytest.raises(TypeError, match="plot_top_losses draws the inputs.*got NoneType"):
        ClassificationInterpretation(None, torch.full((2, 2), 0.5), torch.tensor([0, 1]), torch.zeros(2)).plot_top_losses()
    with pytest.raises(TypeError, match="act must be a function"):
        ClassificationInterpretation.from_learner(trained_learner(), act="softmax")

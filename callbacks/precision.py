"""The numerics of the update: `MixedPrecision` (autocast, loss scaling) and `GradientClip`."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch

from loopkit import Callback, CancelStep


_DTYPE_NAMES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _grads(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]


class MixedPrecision(Callback):
    """Run the forward pass and the loss under autocast in `dtype`; for float16, scale the loss.

    `dtype` is `torch.bfloat16` (default) or `torch.float16`, or their names
    `"bf16"`/`"bfloat16"`, `"fp16"`/`"float16"` (handy for a command-line flag).

    Events: before_fit, before_batch, after_loss, before_backward, before_step,
    after_cancel_batch, after_train, after_validate, after_epoch, after_fit.
    Reads: model, opt, training, loss.
    Writes on the learner: `loss` (float16 only: multiplied by the scale before backward).
    Publishes: `dtype`; `device_type` (where autocast runs: the device of the model's
    parameters at `before_fit`); `scaler` (the `torch.amp.GradScaler` for float16,
    kept across fits, else `None`); `n_skipped` (steps skipped in this fit for
    inf/nan gradients).
    order = -25: after `Device` (-90) and `Distributed` (-30) placed the model, so
    autocast runs on its device; in `before_step` after `GradientAccumulation` (-60)
    completed the window, so it unscales once per step, and before `GradientClip`
    (-10), which must see unscaled gradients.

    Autocast is entered at `before_batch` (training and validation) and left at
    `after_loss`, so the backward pass, the metrics and every callback after the loss
    run outside it; a cancel or an error in between leaves it at the next
    `after_cancel_batch`, `after_train`, `after_validate`, `after_epoch` or
    `after_fit`. Keep the model's parameters in float32: autocast casts per op.

    bfloat16 has float32's range and needs no scaler; it works on CPU and on recent
    GPUs. float16 needs a `GradScaler`: the loss is scaled before backward, and in
    `before_step` the gradients are unscaled in place (`scaler.unscale_`), checked,
    and the scale updated (`scaler.update()`). If any gradient is inf or nan the
    step is skipped the way the scaler's `step` would skip it: the gradients are
    zeroed (set to `None`), `CancelStep` is raised, and the scale backs off. float16
    on CPU works but is slow (a warning says so); use bfloat16 there.

    A `CancelStep` raised after this callback's `before_step` (order > -25) keeps
    gradients that are already unscaled, and the next step would unscale them
    again: zero them, or cancel from a callback with a lower order.
    The scaler's state is saved in checkpoints (`state_dict`).
    """

    order = -25

    def __init__(self, dtype: torch.dtype | str = torch.bfloat16) -> None:
        if isinstance(dtype, str):
            dtype = _DTYPE_NAMES.get(dtype, dtype)  # type: ignore[arg-type]  # e.g. from a --amp flag
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(
                f"MixedPrecision runs autocast in torch.bfloat16 or torch.float16 ('bf16', 'fp16'), got {dtype!r}; "
                "bfloat16 needs no loss scaling and is the safe choice on CPU and recent GPUs."
            )
        self.dtype: torch.dtype = dtype  # type: ignore[assignment]  # a str was mapped above
        self.device_type = "cpu"
        self.scaler: torch.amp.GradScaler | None = None
        self.n_skipped = 0
        self._autocast: torch.autocast | None = None
        self._active = False
        self._scaler_state: dict[str, Any] | None = None
        self._scaler_device = ""

    def before_fit(self) -> None:
        params = list(self.model.parameters())
        self.device_type = params[0].device.type if params else "cpu"
        if not torch.amp.is_autocast_available(self.device_type):
            raise ValueError(
                f"MixedPrecision: torch has no autocast for the model's device {self.device_type!r}; "
                "train on CPU, CUDA or MPS, or remove MixedPrecision."
            )
        if self.dtype == torch.bfloat16 and self.device_type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("MixedPrecision: this GPU has no bfloat16 support; use MixedPrecision(torch.float16).")
        if self.dtype == torch.float16:
            self._check_float32_params(params)
            if self.device_type == "cpu":
                warnings.warn(
                    "MixedPrecision(torch.float16) on CPU is slow and meant for testing; on CPU use "
                    "MixedPrecision(torch.bfloat16), which needs no loss scaling.",
                    stacklevel=2,
                )
            if self.scaler is None or self._scaler_device != self.device_type:
                self.scaler = torch.amp.GradScaler(self.device_type)
                self._scaler_device = self.device_type
            if self._scaler_state is not None:
                self.scaler.load_state_dict(self._scaler_state)
                self._scaler_state = None
        self._autocast = torch.autocast(self.device_type, dtype=self.dtype)
        self._active = False
        if not self.learn.evaluating:  # the count is the fit's; an evaluation takes no step
            self.n_skipped = 0

    @staticmethod
    def _check_float32_params(params: list[torch.nn.Parameter]) -> None:
        half = [tuple(p.shape) for p in params if p.requires_grad and p.dtype == torch.float16]
        if half:
            raise ValueError(
                f"MixedPrecision(torch.float16) needs float32 parameters (the scaler cannot unscale float16 "
                f"gradients), but {len(half)} are float16 (shapes {half[:3]}...); keep the model in float32 "
                "(drop model.half()): autocast runs each op in float16 for you."
            )

    def _enter(self) -> None:
        self._autocast.__enter__()  # type: ignore[union-attr]  # made at before_fit
        self._active = True

    def _leave(self) -> None:
        if self._active:
            self._active = False
            self._autocast.__exit__(None, None, None)  # type: ignore[union-attr]

    def before_batch(self) -> None:
        self._enter()

    def after_loss(self) -> None:
        self._leave()

    def after_cancel_batch(self) -> None:
        self._leave()

    def after_train(self) -> None:
        self._leave()

    def after_validate(self) -> None:
        self._leave()

    def after_epoch(self) -> None:
        self._leave()

    def after_fit(self) -> None:
        self._leave()

    def before_backward(self) -> None:
        if self.scaler is not None and self.dtype == torch.float16:
            self.learn.loss = self.scaler.scale(self.learn.loss)

    def before_step(self) -> None:
        scaler = self.scaler
        if scaler is None or self.dtype != torch.float16:
            return
        opt = self.learn.opt
        if not _grads(opt):
            return
        scaler.unscale_(opt)
        # unscale_ may replace sparse gradients, so read them after it.
        finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(_grads(opt))))
        scaler.update()  # right after unscale_, so an error later in the step can't leave it half done
        if not finite:
            opt.zero_grad(set_to_none=True)
            self.n_skipped += 1
            raise CancelStep

    def state_dict(self) -> dict[str, Any]:
        """Return the scaler's state (float16), for checkpoints; empty for bfloat16."""
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (the scaler is made at the next `before_fit` if needed)."""
        if "scaler" in state:
            if self.scaler is not None:
                self.scaler.load_state_dict(state["scaler"])
            else:
                self._scaler_state = dict(state["scaler"])

    def __repr__(self) -> str:
        return f"MixedPrecision({self.dtype})"


class GradientClip(Callback):
    """Clip the gradients' total norm to `max_norm` just before each optimizer step.

    Events: before_step. Reads: opt.
    Writes on the learner: nothing (the gradients of the optimizer's parameters, in place).
    Publishes: `max_norm`, `norm_type`, `grad_norm` (the total norm before clipping at
    the latest step: a tensor left on the device, so reading it syncs).
    order = -10: in `before_step`, after `GradientAccumulation` (-60) completed the
    window's gradient and `MixedPrecision` (-25) unscaled it, so the norm is that of
    the true gradient; and before callbacks of the default order (0) that read gradients.

    Uses `torch.nn.utils.clip_grad_norm_` over the optimizer's parameters: when the
    norm exceeds `max_norm`, the gradients are multiplied by `max_norm / (norm + 1e-6)`,
    so the optimizer never sees a larger norm. With `GradientAccumulation` it runs
    once per window, on the accumulated gradient.
    """

    order = -10

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        if not _is_number(max_norm) or not 0 < max_norm < math.inf:
            raise ValueError(f"GradientClip: max_norm must be a finite number > 0, got {max_norm!r}; e.g. 1.0.")
        if not _is_number(norm_type) or not norm_type > 0:
            raise ValueError(
                f"GradientClip: norm_type must be > 0 (2.0 is the Euclidean norm, math.inf the largest "
                f"absolute value), got {norm_type!r}."
            )
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)
        self.grad_norm: torch.Tensor | None = None

    def before_step(self) -> None:
        params = [p for group in self.learn.opt.param_groups for p in group["params"] if p.grad is not None]
        self.grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)

    def __repr__(self) -> str:
        return f"GradientClip(max_norm={self.max_norm}, norm_type={self.norm_type})"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)

"""Speed switches that leave the model's function unchanged (docs/method.md §12).

* ``compile_with_fallback``: ``torch.compile`` of a module's ``forward`` (or any callable) that
  falls back to the eager callable, with one warning, when compilation fails — at the
  ``torch.compile`` call or, as compilation is lazy, at the first call of the compiled function.
* ``fold_batch_norm``: the weight and bias of a bias-free convolution followed by a BatchNorm in
  eval mode, as one convolution. Exact up to rounding, because eval-mode BatchNorm is an affine map
  per channel, y = γ·(x − μ)/√(σ² + ε) + β; it is used only where nothing trains the result
  (evaluation, feature extraction), since in training it would change the operations autograd
  differentiates, and so the rounding of every gradient the optimiser sees.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)
# how long the first compiled call takes, for the message: model.compile_decoder took 75 s (README,
# speed) and 154 s (an issue report) on 2-core CPUs; a GPU machine's many cores compile faster
COMPILE_TIME = "usually 1–3 minutes on a 2-core CPU, less on a many-core machine"


def fold_batch_norm(
    weight: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolution weight and bias equal to ``bn(conv(x, weight))`` with frozen statistics.

    Args:
        weight: bias-free convolution weight ``(C_out, C_in, *kernel)``.
        bn: the BatchNorm after it, in eval mode (its running statistics are used).

    Returns:
        Folded weight (same shape and memory format as ``weight``) and bias ``(C_out,)``.
    """
    if bn.training and bn.track_running_stats:
        raise RuntimeError("fold_batch_norm needs a BatchNorm in eval mode (frozen statistics)")
    scale = torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * scale.view(shape).to(weight.dtype), bias.to(weight.dtype)


class CompiledWithFallback:
    """A callable running ``torch.compile(fn)``, or ``fn`` itself once compiling it has failed.

    A call whose compiled run raises is run again eagerly: when the eager run succeeds, the failure
    was the compiler's, so it is reported once (a ``UserWarning`` naming ``name``) and every later
    call is eager; when the eager run raises too, that error propagates and compilation stays on
    (the input was at fault, not the compiler).

    Args:
        fn: the eager callable (e.g. a module's bound ``forward``).
        name: what is compiled, for the warning (e.g. ``"model.compile_encoder"``).
        announced: the config keys whose compilation was already announced, shared by the
            callables of one model (the first call of the first of them says it is compiling).
        **options: passed to ``torch.compile``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        announced: set[str] | None = None,
        **options: Any,
    ) -> None:
        self.eager = fn
        self._first = True
        self.announced = set() if announced is None else announced
        self.name = name
        self.compiled: Callable[..., Any] | None = None
        try:
            self.compiled = torch.compile(fn, **options)
        except Exception as exc:  # any failure of the compiler means: run eager
            self._give_up(exc)
        functools.update_wrapper(self, fn)

    def _give_up(self, exc: BaseException) -> None:
        self.compiled = None
        warnings.warn(
            f"torch.compile failed for {self.name} ({type(exc).__name__}: {exc}); running it "
            f"eagerly (same results, without the speed-up); set {self.name}=false to skip compiling",
            stacklevel=3,
        )

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled function."""
        return self.compiled is not None

    def _announce(self) -> float | None:
        """Say, once per config key, that the first call compiles and how long that takes: no
        progress is shown meanwhile (nor at all with ``callbacks.progress_bar=null``)."""
        self._first = False
        if self.name in self.announced:
            return None
        self.announced.add(self.name)
        log.info("%s: compiling with torch.compile (%s) ...", self.name, COMPILE_TIME)
        return time.perf_counter()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            started = self._announce() if self._first else None
            try:
                out = self.compiled(*args, **kwargs)
                if started is not None:
                    took = time.perf_counter() - started
                    log.info("%s: compiled (first call %.0f s)", self.name, took)
                return out
            except Exception as exc:  # whose fault it was is decided by the eager run
                out = self.eager(*args, **kwargs)  # raises the input's own error, if it has one
                self._give_up(exc)
                return out
        return self.eager(*args, **kwargs)


def compile_with_fallback(
    target: nn.Module | Callable[..., Any],
    name: str,
    announced: set[str] | None = None,
    **options: Any,
):
    """Compile a module's ``forward`` in place, or wrap a callable, with the eager fallback.

    A module keeps its parameters, buffers, hooks and ``state_dict`` keys (``torch.compile(module)``
    would prefix them with ``_orig_mod.``): only the ``forward`` it calls is replaced.

    Args:
        target: a module (its ``forward`` is compiled) or a callable.
        name: the config key that asked for it, named in the warning.
        announced: shared by the compiled parts of one model (``CompiledWithFallback``).
        **options: passed to ``torch.compile``.

    Returns:
        The module itself, or the wrapped callable.
    """
    if isinstance(target, nn.Module):
        target.forward = CompiledWithFallback(target.forward, name, announced, **options)
        return target
    return CompiledWithFallback(target, name, announced, **options)

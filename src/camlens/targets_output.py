"""Raw outputs with a sign (regression, binary sigmoid heads) and counterfactual targets.

- :func:`output` ``(index=None, sign=+1)``: S = sign * y_index, the raw output itself.
- :func:`counterfactual` ``(c)``: S = -y^c (Selvaraju et al. 2017, sec. 5).

Both are re-exported by :mod:`camlens.targets`. A negated score only means something to methods
that read the score's gradient (the Grad-CAM family, FullGrad, the attention methods); methods
that score class ids by re-running the model (Score-CAM, Ablation-CAM, ...), CAM's linear head
and the class-agnostic Eigen-CAM would ignore the sign, so the engine refuses them (see
:func:`check_signed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from camlens.errors import TargetError, UnsupportedModelError
from camlens.layouts import describe, primary_output
from camlens.targets import ScoreFn, Selection, Target, TargetSpec, as_target


def _sign(sign: Any) -> int:
    if isinstance(sign, bool) or sign not in (1, -1):
        raise TargetError(f"sign must be +1 or -1, got {sign!r}")
    return int(sign)


class Output(Target):
    """S = sign * y[:, index]: a raw model output (regression, a single sigmoid logit)."""

    def __init__(self, index: int | Sequence[int] | None = None, sign: int = 1):
        self.sign = _sign(sign)
        if index is not None:
            items = [index] if isinstance(index, int) else list(index)
            if not items or any(isinstance(i, bool) or not isinstance(i, int) for i in items):
                raise TargetError(
                    f"output(index=...) takes None, an int or a list of ints, got {index!r}"
                )
        self.index = index
        self.signed = self.sign < 0

    def select(
        self, output: Any, batch: int, copies: int = 0, score: ScoreFn | None = None
    ) -> Selection:
        y = primary_output(output)
        total = batch * (1 + copies)
        if y.shape[0] != total or y.ndim > 2 or not y.is_floating_point():
            raise UnsupportedModelError(
                f"output() explains real outputs of shape (B,) or (B, K), but the model returned "
                f"{describe(output)}; for maps use camlens.targets.segmentation(...), else a "
                "callable output -> (B,) scores"
            )
        columns = 1 if y.ndim == 1 else y.shape[1]
        if self.index is None:
            if columns != 1:
                raise TargetError(
                    f"the model has {columns} outputs; say which with output(index=i), "
                    f"0 <= i < {columns} (or a list of indices for several maps per image)"
                )
            ids = torch.full((total,), -1 if y.ndim == 1 else 0, dtype=torch.long, device=y.device)
            return Selection(self.sign * y.reshape(total), ids)
        many = not isinstance(self.index, int)
        index = torch.as_tensor(
            [self.index] if not many else list(self.index), dtype=torch.long, device=y.device
        )
        if y.ndim == 1 or bool(((index < 0) | (index >= columns)).any()):
            raise TargetError(
                f"output(index={self.index!r}) is out of range: the model returned "
                f"{describe(output)}, so an index must be in [0, {columns - 1}]"
                + (" (a (B,) output takes output() without index)" if y.ndim == 1 else "")
            )
        picked = self.sign * y[:, index]  # (N, T)
        ids = index.expand(total, -1)
        return Selection(picked, ids.clone()) if many else Selection(picked[:, 0], ids[:, 0])

    def __repr__(self) -> str:
        return f"output(index={self.index!r}, sign={self.sign:+d})"


def output(index: int | Sequence[int] | None = None, sign: int = 1) -> Output:
    """Explain a raw output: S = sign * y_index (regression, a binary sigmoid head).

    ``index``: None for a model with one output per image ((B,) or (B, 1)); an int for one column
    of (B, K) outputs; a list of ints for several columns (maps (B, T, H, W)). ``sign``: +1 (what
    raises the output) or -1 (what lowers it). A binary classifier with one sigmoid logit z has
    p(negative) = 1 - sigmoid(z) = sigmoid(-z): ``output(sign=-1)`` explains the negative class.
    ``targets`` holds the column (-1 for a (B,) output). ``sign=-1`` needs a gradient method.
    """
    return Output(index, sign)


class Counterfactual(Target):
    """S = -y^c for the classes (or any target) given: what speaks against them."""

    signed = True

    def __init__(self, target: TargetSpec = None):
        if isinstance(target, Counterfactual):
            raise TargetError("counterfactual(counterfactual(c)) is c itself; pass c")
        self.target = target
        self._inner = as_target(target)

    def select(
        self, output: Any, batch: int, copies: int = 0, score: ScoreFn | None = None
    ) -> Selection:
        sel = self._inner.select(output, batch, copies, score)
        return Selection(-sel.scores, sel.ids, sel.extras)

    def __repr__(self) -> str:
        return f"counterfactual({self.target!r})"


def counterfactual(target: TargetSpec = None) -> Counterfactual:
    """Counterfactual explanation (Selvaraju et al., ICCV 2017, arXiv:1610.02391, sec. 5).

    The gradients of y^c are negated: alpha^c_k = (1/Z) sum_ij -dy^c/dA^k_ij, and the map
    ReLU(sum_k alpha^c_k A^k) shows the regions whose removal would make the network more
    confident of c. Here that is the score S = -y^c, so every gradient method reads
    dS/dA = -dy^c/dA. ``target``: the class(es) as for any target (None: each image's top class,
    an int, B ints, (B, T) ints, ``top(k)``, ...); several per image give maps (B, T, H, W).
    Needs a gradient method (the Grad-CAM family, FullGrad, the attention methods).
    """
    return Counterfactual(target)


#: method inputs whose maps do not follow the target score's gradient
_UNSIGNED_INPUTS = ("class_weights", "input_probe", "layer_probe", "acts")


def check_signed(target: Any, method: str, inputs: str) -> None:
    """Refuse a negated target for a method that would ignore the sign."""
    if getattr(target, "signed", False) and inputs in _UNSIGNED_INPUTS:
        raise TargetError(
            f"{target!r} negates the score, which {method!r} ignores (it scores class ids or "
            "reads no gradient); use a gradient method such as gradcam, gradcampp or layercam"
        )

"""Sanity checks (Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018).

An explanation that stays the same when the model's learned weights are replaced by random ones
(model-parameter randomisation, MPRT), or when a different class is explained (random logit),
does not explain the model. Both checks compare maps by Spearman rank correlation and SSIM
(:mod:`camlens.metrics.similarity`). Randomisation works on a deep copy: the user's model is
never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import camlens
from camlens.engine import preserved_model
from camlens.errors import InputError, LayerNotFoundError
from camlens.layers import LayerSpec
from camlens.metrics.perturbation import resolve_targets
from camlens.metrics.similarity import spearman, ssim
from camlens.targets import TargetSpec

#: A method to check: a registered name, or f(model, images, class_ids) -> maps (B, H, W).
MapFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass
class Sanity:
    """The result of a sanity check.

    Attributes:
        steps: what was changed at each step (cumulatively: the randomised modules, top down;
            or ``"random logit"``).
        spearman: (S, B) rank correlation of each image's map after each step with its original.
        ssim: (S, B) SSIM of the same pairs.
        threshold: the pass mark for the mean |Spearman| after the last step.
    """

    steps: list[str]
    spearman: Tensor
    ssim: Tensor
    threshold: float

    @property
    def final_spearman(self) -> float:
        """Mean over images of |Spearman| after the last step (sign flips count as similar)."""
        return float(self.spearman[-1].abs().mean())

    @property
    def passed(self) -> bool:
        """True when the maps after the last step are no longer like the originals:
        mean |Spearman| < ``threshold``."""
        return self.final_spearman < self.threshold


def _map_fn(method: str | MapFn, layer: LayerSpec, options: dict[str, Any]) -> MapFn:
    if callable(method):
        return method
    camlens.method_info(method)  # a clear error for an unknown name, before any work

    def run(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        return camlens.explain(model, images, method, layer, ids, **options).maps

    return run


def _owns_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def randomization_units(model: nn.Module, max_units: int = 12) -> list[str]:
    """Default MPRT steps: named groups of the model's parameters, coarsest first.

    Starts from the model's children that hold parameters and goes one level deeper (every
    group into its children) while the count stays within ``max_units``, so all steps have one
    granularity (a ResNet-18 gives conv1, bn1, the 8 blocks of layer1..4 and fc; the demo CNN
    its 6 conv blocks and fc). Returned in registration order; :func:`sanity_randomization`
    orders them top down by a dry run. Parameters the model holds itself (a ViT's class token
    and position embeddings) are randomised with the last, input-side step.
    """
    units: list[tuple[str, nn.Module]] = [
        (name, m) for name, m in model.named_children() if _has_params(m)
    ]
    if not units:
        return [""]  # the model itself holds all its parameters directly: one step

    while True:
        parts = [
            [(f"{name}.{n}", c) for n, c in m.named_children() if _has_params(c)]
            if not _owns_params(m)
            else [(name, m)]
            for name, m in units
        ]
        finer = [unit for group in parts for unit in (group or [])]
        if len(finer) == len(units) or len(finer) > max_units:
            break
        units = finer
    return [name for name, _ in units]


def _order_top_down(model: nn.Module, names: list[str], image: Tensor) -> list[str]:
    """Sort module names by when they first run in a forward pass, the last to run first."""
    modules = dict(model.named_modules())
    first: dict[str, int] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _inp: Any, name: str = name) -> None:
            first.setdefault(name, len(first))

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(image)
    finally:
        for h in handles:
            h.remove()
    ran = [n for n in names if n in first]
    return sorted(ran, key=lambda n: -first[n])


def _randomize(module: nn.Module, generator_seed: int, recurse: bool = True) -> None:
    """Re-initialise the learned parameters of ``module`` (and its submodules), in place.

    Modules with ``reset_parameters`` use their own initialiser (what they were built with);
    their buffers (e.g. batch-norm running statistics) are kept, as only learned weights are
    randomised. Other parameters are drawn from N(0, std of their trained values).
    """
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    # fork every generator the initialisers may draw from: the caller's RNG state is untouched
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(generator_seed)
        for sub in module.modules() if recurse else [module]:
            if not _owns_params(sub):
                continue
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset) and recurse:
                buffers = {n: b.clone() for n, b in sub.named_buffers(recurse=False)}
                with torch.no_grad():
                    reset()
                    for n, b in buffers.items():
                        getattr(sub, n).copy_(b)
            else:
                with torch.no_grad():
                    for p in sub.parameters(recurse=False):
                        std = float(p.std()) if p.numel() > 1 else 0.02
                        p.normal_(0.0, std if std > 0 else 0.02)


def sanity_randomization(
    model: nn.Module,
    images: Tensor,
    method: str | MapFn = "gradcam",
    targets: TargetSpec = None,
    layer: LayerSpec = None,
    *,
    layers: Sequence[str] | None = None,
    max_steps: int = 12,
    seed: int = 0,
    threshold: float = 0.5,
    **options: Any,
) -> Sanity:
    """Cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018, Sec. 4.1).

    On a deep copy of ``model``, the learned weights are re-initialised one group at a time from
    the output down (``layers``: module names; by default :func:`randomization_units`), and
    after every step the maps of ``method`` for the same classes (``targets``, resolved on the
    trained model) are compared with the trained model's maps by Spearman rank correlation and
    SSIM. A method that explains the model must drift away: it passes when the mean |Spearman|
    after the last step is below ``threshold``. ``method``: a registered name (with ``layer``
    and explain ``options``), or a callable f(model, images, class_ids) -> maps (B, H, W).
    """
    fn = _map_fn(method, layer, options)
    _, ids = resolve_targets(model, images, targets)
    with preserved_model(model):
        original = fn(model, images, ids).float()
    twin = copy.deepcopy(model).eval()
    modules = dict(twin.named_modules())
    names = list(layers) if layers is not None else randomization_units(twin, max_steps)
    unknown = [n for n in names if n not in modules]
    if unknown:
        near = [n for n in modules if n][:12]
        raise LayerNotFoundError(
            f"no module named {unknown[0]!r} to randomise; modules include: {', '.join(near)}"
        )
    if not names:
        raise InputError("nothing to randomise: give at least one module name in layers")
    if layers is None:
        names = _order_top_down(twin, names, images[:1])
    rho, sim = [], []
    for step, name in enumerate(names):
        _randomize(modules[name], seed + step)
        if layers is None and name and step == len(names) - 1 and _owns_params(twin):
            _randomize(twin, seed + step, recurse=False)  # class token, position embeddings
        maps = fn(twin, images, ids).float()
        rho.append(spearman(original, maps))
        sim.append(ssim(original, maps))
    del twin
    return Sanity(names, torch.stack(rho), torch.stack(sim), threshold)


def sanity_random_logit(
    model: nn.Module,
    images: Tensor,
    method: str | MapFn = "gradcam",
    targets: TargetSpec = None,
    layer: LayerSpec = None,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    **options: Any,
) -> Sanity:
    """Random-logit check (Adebayo et al., NeurIPS 2018, Sec. 5; Sixt et al., ICML 2020).

    Each image's map for its class (``targets``; default the top class) is compared with its
    map for another class drawn uniformly at random (seeded). A class-sensitive method gives
    different maps: it passes when the mean |Spearman| is below ``threshold``. Class-agnostic
    methods such as Eigen-CAM fail by design.
    """
    fn = _map_fn(method, layer, options)
    logits, ids = resolve_targets(model, images, targets)
    classes = logits.shape[1]
    if classes < 2:
        raise InputError("the random-logit check needs a model with at least 2 classes")
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, classes, (len(ids),), generator=gen).to(ids.device)
    other = (ids + shift) % classes
    with preserved_model(model):
        a = fn(model, images, ids).float()
        b = fn(model, images, other).float()
    return Sanity(["random logit"], spearman(a, b)[None], ssim(a, b)[None], threshold)

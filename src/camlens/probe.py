"""Probes: how methods that re-run the model (Score-CAM, Ablation-CAM, ...) score perturbations.

A method never touches the model or registers hooks; it asks a probe to score ``n`` perturbed
inputs that it builds chunk by chunk. The probe runs them in no-grad batches of ``batch_size``
(so memory is bounded by the batch size, not by the channel count), with no capture hook
attached, and advances a progress bar when one was asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from camlens.errors import CamlensError, TargetError
from camlens.layouts import primary_output

#: build(start, stop) -> (inputs for items start..stop-1, owner image index of each item)
Builder = Callable[[int, int], tuple[Tensor, Tensor]]


class Probe:
    """Scores batches of perturbed images (input probe) or activations (layer probe).

    Attributes:
        images: (B, C, H, W) the images being explained.
        acts: (B, K, h, w) the layer's activations (None for an input-level probe, as the
            metrics use).
        targets: (B,) class ids being explained, or (B, T) for T targets per image: then
            :meth:`scores` gives (n, T), every perturbed input scored for all T classes at once.
        base: (B,) the explained scores of the unperturbed images (None when not needed).
        generator: a seeded torch.Generator for methods that draw noise.
    """

    def __init__(
        self,
        run: Callable[[Tensor, Tensor], Any],
        images: Tensor,
        acts: Tensor | None,
        targets: Tensor,
        base: Tensor | None,
        batch_size: int = 64,
        progress: bool = False,
        seed: int = 0,
        desc: str = "",
        input_dtype: torch.dtype | None = None,
    ):
        if bool((targets < 0).any()):
            raise TargetError(
                f"{desc or 'this method'} re-runs the model and scores class ids; pass class ids "
                "(an int or one per image) as target, not a callable"
            )
        self._run = run
        self.images, self.acts, self.targets, self.base = images, acts, targets, base
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.desc = desc
        # what the re-run takes: the images' dtype (or the layer's, for a layer probe); masks
        # and weights are float32, a half-precision model needs its own dtype back
        self.input_dtype = input_dtype or images.dtype
        self.generator = torch.Generator(device=images.device).manual_seed(seed)
        self.passes = 0

    def scores(self, n: int, build: Builder, softmax: bool = False) -> Tensor:
        """The explained score (the target's logit, or its softmax probability) of ``n`` items."""
        out = torch.empty(
            (n, *self.targets.shape[1:]), device=self.images.device, dtype=torch.float32
        )
        bar = None
        if self.progress and n > 0:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=self.desc, unit="img", leave=False)
        try:
            with torch.no_grad():
                for start in range(0, n, self.batch_size):
                    stop = min(n, start + self.batch_size)
                    inputs, owner = build(start, stop)
                    if isinstance(inputs, Tensor) and inputs.is_floating_point():
                        inputs = inputs.to(self.input_dtype)
                    logits = self._run(inputs, owner)
                    try:
                        logits = primary_output(logits)
                    except CamlensError:
                        logits = None
                    if not isinstance(logits, Tensor) or logits.ndim != 2:
                        raise TargetError(
                            "this method scores class logits, but the model's output is not a "
                            "(B, classes) tensor"
                        )
                    if softmax:
                        logits = logits.float().softmax(dim=1)
                    ids = self.targets[owner]
                    picked = logits.gather(1, ids if ids.ndim == 2 else ids[:, None])
                    out[start:stop] = (picked if ids.ndim == 2 else picked[:, 0]).float()
                    self.passes += 1
                    if bar is not None:
                        bar.update(stop - start)
        finally:
            if bar is not None:
                bar.close()
        return out

    def output(self, inputs: Tensor, owner: Tensor) -> Any:
        """The raw model output for one batch of inputs (no grad)."""
        with torch.no_grad():
            return self._run(inputs, owner)

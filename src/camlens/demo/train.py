"""Training the demo models on ``shapes``: reproducible from a seed, minutes on 2 CPU cores.

camlens demo train [--model cnn|vit] [--out PATH] [--seed 0] [--steps N]
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from camlens.demo.model import ShapesCNN, load_model
from camlens.demo.shapes import shapes
from camlens.demo.vit import ShapesViT


def _batch(seed: int, step: int, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training batch ``step``: 3/4 one-object and 1/4 two-object images, seeded."""
    x1, y1, _ = shapes(batch * 3 // 4, seed=seed * 1_000_003 + step, size=size)
    x2, y2, _ = shapes(batch // 4, seed=seed * 1_000_003 + step, size=size, instances=2)
    return torch.cat([x1, x2]), torch.cat([y1, y2])


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy, in batches of 250, with the model in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    correct = sum(
        int((model(images[i : i + 250]).argmax(1) == labels[i : i + 250]).sum())
        for i in range(0, len(images), 250)
    )
    model.train(was_training)
    return correct / max(len(images), 1)


def _fit(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    seed: int,
    steps: int,
    batch: int,
    size: int,
    desc: str,
    progress: bool,
) -> None:
    """``steps`` AdamW steps of cross-entropy on fresh batches (the caller sets the modes)."""
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        x, y = _batch(seed, step, batch, size)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")


def _save(model: torch.nn.Module, out: str | Path) -> None:
    """The model's state as safetensors at ``out`` (parent folders created)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))


def train(
    out: str | Path,
    seed: int = 0,
    steps: int = 1500,
    batch: int = 64,
    size: int = 96,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``ShapesCNN`` on freshly generated shapes and save safetensors weights to ``out``.

    Every batch is new data (seeded from ``seed`` and the step), one image in four has two
    instances; AdamW with a one-cycle schedule. Returns the accuracy on a fresh
    ``shapes(1000, seed=12345)`` and the wall time.
    """
    torch.manual_seed(seed)
    model = ShapesCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    start = time.time()
    model.train()
    _fit(model, opt, sched, seed, steps, batch, size, "training", progress)
    test_x, test_y, _ = shapes(1000, seed=12345, size=size)
    acc = accuracy(model, test_x, test_y)
    model.eval()
    _save(model, out)
    return {"test_accuracy": acc, "seconds": time.time() - start}


def train_vit(
    out: str | Path,
    seed: int = 0,
    steps: int = 400,
    batch: int = 64,
    cnn: str | Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``ShapesViT``'s transformer on freshly generated shapes; save safetensors to ``out``.

    The hybrid ViT's backbone is the demo CNN's ``features`` (the shipped weights, or those at
    ``cnn``), copied in and frozen (eval mode, no gradient): only the patch projection, class
    token, position embeddings, blocks, final norm and head train. Same data as :func:`train`
    (every batch new, seeded from ``seed`` and the step, one image in four with two instances),
    AdamW with a one-cycle schedule. The saved state holds the CNN part too, so the file is
    self-contained. Returns the accuracy on ``shapes(1000, seed=12345)`` and on the issue's
    ``shapes(300, seed=4242)``, and the wall time.
    """
    torch.manual_seed(seed)
    model = ShapesViT()
    features = load_model(path=cnn).features
    model.patch_embed.backbone.load_state_dict(features.state_dict())
    backbone = model.patch_embed.backbone
    trained = model.transformer_parameters()
    opt = torch.optim.AdamW(trained, lr=2e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    start = time.time()
    model.train()
    backbone.eval().requires_grad_(False)
    try:
        _fit(model, opt, sched, seed, steps, batch, 96, "training the ViT", progress)
    finally:
        backbone.requires_grad_(True)
    model.eval()
    test_x, test_y, _ = shapes(1000, seed=12345)
    acc = accuracy(model, test_x, test_y)
    bar_x, bar_y, _ = shapes(300, seed=4242)
    acc_4242 = accuracy(model, bar_x, bar_y)
    _save(model, out)
    return {
        "test_accuracy": acc,
        "accuracy_4242": acc_4242,
        "seconds": time.time() - start,
    }

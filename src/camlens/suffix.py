"""Running only the part of a network after a layer, from cached values ("what comes before").

Ablation-CAM and Recipro-CAM change the activation of one layer many times; re-running the whole
model for each change repeats the part below the layer for nothing. :func:`split_at` traces the
model with torch.fx (the layer kept as one call), cuts the graph after the layer, and returns a
*prefix* that computes every value the rest needs (the layer's output and any earlier value the
rest reads, e.g. a skip connection) and a *suffix* that computes the output from those values.
Both share the model's modules and parameters; the model itself is not changed.

Models that torch.fx cannot trace (data-dependent control flow) get :class:`HookedRerun`, which
re-runs the whole model with the layer's output replaced through a forward hook: same results,
slower.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, fx, nn


class _LayerLeafTracer(fx.Tracer):
    def __init__(self, leaf: str):
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.leaf or super().is_leaf_module(m, qualname)


class SplitModel:
    """prefix(x) -> values; suffix(acts, *others) -> output, with ``others`` cached per image."""

    def __init__(self, prefix: fx.GraphModule, suffix: fx.GraphModule, layer_pos: int):
        self.prefix = prefix
        self.suffix = suffix
        self.layer_pos = layer_pos  # which of the prefix's values is the layer's output

    def values(self, images: Tensor) -> list[Tensor]:
        """The cached values the part after the layer needs, from one run of the part before."""
        out = self.prefix(images)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def run(self, values: list[Tensor], acts: Tensor, owner: Tensor) -> Any:
        """The model's output for modified activations ``acts`` of images ``owner``."""
        batch = values[self.layer_pos].shape[0]
        args = [
            acts.clone()
            if i == self.layer_pos
            else (v[owner] if isinstance(v, Tensor) and v.ndim and v.shape[0] == batch else v)
            for i, v in enumerate(values)
        ]
        return self.suffix(*args)


def split_at(model: nn.Module, layer: str) -> SplitModel | None:
    """Split ``model`` after ``layer`` with torch.fx, or None when it cannot be traced."""
    try:
        graph = _LayerLeafTracer(layer).trace(model)
    except Exception:  # untraceable forward: the caller falls back to HookedRerun
        return None
    nodes = list(graph.nodes)
    at = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer]
    if len(at) != 1:
        return None
    cut = at[0]
    before = set(nodes[: cut + 1])
    needed: list[fx.Node] = []
    for node in nodes[cut + 1 :]:
        for src in node.all_input_nodes:
            # Parameters and buffers (get_attr) are not per-image values: the suffix reads them.
            if src in before and src not in needed and src.op != "get_attr":
                needed.append(src)
    if nodes[cut] not in needed:
        return None  # the output does not depend on the layer

    prefix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes[: cut + 1]:
        env[node] = prefix_graph.node_copy(node, lambda a: env[a])
    prefix_graph.output(tuple(env[n] for n in needed))

    suffix_graph = fx.Graph()
    env = {n: suffix_graph.placeholder(f"cached_{i}") for i, n in enumerate(needed)}
    for node in nodes[: cut + 1]:
        if node.op == "get_attr":
            env[node] = suffix_graph.node_copy(node, lambda a: env[a])
    for node in nodes[cut + 1 :]:
        env[node] = suffix_graph.node_copy(node, lambda a: env[a])
    root = fx.GraphModule(model, graph)  # shares the model's modules
    return SplitModel(
        fx.GraphModule(root, prefix_graph),
        fx.GraphModule(root, suffix_graph),
        needed.index(nodes[cut]),
    )


class HookedRerun:
    """Fallback for untraceable models: the whole model with the layer's output replaced."""

    def __init__(self, model: nn.Module, module: nn.Module, images: Tensor):
        self.model, self.module, self.images = model, module, images

    def run(self, acts: Tensor, owner: Tensor) -> Any:
        """The model's output for modified activations ``acts`` of images ``owner`` (a full re-run
        whose layer output is replaced by a hook)."""

        def replace(_m: nn.Module, _i: Any, _o: Any) -> Tensor:
            return acts.clone()  # an in-place op after the layer must not touch ``acts``

        handle = self.module.register_forward_hook(replace)
        try:
            return self.model(self.images[owner])
        finally:
            handle.remove()


def layer_runner(
    model: nn.Module, layer: str, module: nn.Module, images: Tensor
) -> tuple[Tensor, Callable[[Tensor, Tensor], Any]]:
    """The layer's activations for ``images`` and a function (acts, owner) -> model output.

    Uses the fx split when the model traces (only the part after the layer runs), else the
    hooked full re-run. Call under ``torch.no_grad()``.
    """
    split = split_at(model, layer)
    if split is not None:
        values = split.values(images)
        return values[split.layer_pos], lambda acts, owner: split.run(values, acts, owner)
    store: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, o: store.append(o.detach().clone()))
    try:
        model(images)
    finally:
        handle.remove()
    rerun = HookedRerun(model, module, images)
    return store[-1], rerun.run

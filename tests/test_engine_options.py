"""The Explainer's options and refusals (each by its whole message), its layers and layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camlens
import camlens.engine
from camlens.layouts import Layout, infer_layout
from camlens.registry import get_method
from tests.conftest import whole
from tests.engine_models import Net, acts_and_grads, class_score, images

ANY = " (and layout, batch_size, progress, seed for any method)"


@pytest.mark.parametrize(
    ("method", "options", "unknown", "accepted"),
    [
        ("gradcam", {"foo": 1}, "['foo']", "none"),
        ("gradcampp", {"d2": 1}, "['d2']", "none"),
        ("gradcampp", {"d3": 1}, "['d3']", "none"),
        ("gradcam", {"samples": 2}, "['samples']", "none"),
        ("fem", {"zed": 1, "bar": 2}, "['bar', 'zed']", "k, weighting"),
        ("finercam", {"k": 1}, "['k']", "base, gamma, references"),
        ("smoothgradcampp", {"k": 1}, "['k']", "samples"),
    ],
)
def test_unknown_options_name_what_the_method_accepts(method, options, unknown, accepted) -> None:
    msg = f"unknown option(s) {unknown} for method {method!r}; it accepts: {accepted}{ANY}"
    with pytest.raises(camlens.InputError, match=whole(msg)):
        camlens.Explainer(Net(), method, **options)


def test_options_go_to_the_function_or_to_the_score() -> None:
    explainer = camlens.Explainer(Net(), "finercam", base="layercam", gamma=0.5, references=2)
    assert explainer._fn_options == {"base": "layercam"}
    assert explainer._score_options == {"gamma": 0.5, "references": 2}
    assert camlens.Explainer(Net(), "smoothgradcampp", samples=3)._fn_options == {"samples": 3}
    assert camlens.Explainer(Net(), "fem", k=1.5)._fn_options == {"k": 1.5}
    assert camlens.Explainer(Net(), "randomcam", seed=4)._fn_options == {"seed": 4}
    assert camlens.Explainer(Net(), "randomcam")._fn_options == {"seed": 0}
    assert camlens.Explainer(Net(), "eigencam", seed=4)._fn_options == {}


def test_not_a_model() -> None:
    msg = "model must be a torch.nn.Module, got function"
    with pytest.raises(camlens.InputError, match=whole(msg)):
        camlens.Explainer(lambda x: x)


def test_layout_spellings() -> None:
    for layout in (None, "nchw", "nhwc", "tokens", lambda a: a):
        assert camlens.Explainer(Net(), layout=layout).layout_spec is layout
    msg = "layout must be None, 'nchw', 'nhwc', 'tokens' or a callable, got 'NCHW'"
    with pytest.raises(camlens.InputError, match=whole(msg)):
        camlens.Explainer(Net(), layout="NCHW")


def test_smooth_is_for_methods_of_acts_and_grads() -> None:
    camlens.Explainer(Net(), "gradcam", smooth=2)
    camlens.Explainer(Net(), "cam", smooth=0)
    msg = (
        "smooth= applies to gradient methods that take (acts, grads); 'CAM' does not "
        "(smoothgradcampp has its own samples= option)"
    )
    with pytest.raises(camlens.InputError, match=whole(msg)):
        camlens.Explainer(Net(), "CAM", smooth=2)


def test_exact_is_an_option_of_gradcampp() -> None:
    assert camlens.Explainer(Net(), "gradcampp", exact=True).exact is True
    assert camlens.Explainer(Net(), "gradcampp", exact=True, exact_chunk=3).exact_chunk == 3
    assert camlens.Explainer(Net(), "gradcampp").exact is False
    assert camlens.Explainer(Net(), "gradcampp", exact=True).exact_chunk == 256  # the default
    assert camlens.Explainer(Net()).batch_size == 64  # the documented defaults
    assert camlens.Explainer(Net(), "gradcam", exact=False).exact is False
    msg = "exact=True is an option of gradcampp, not of 'layercam'"
    with pytest.raises(camlens.InputError, match=whole(msg)):
        camlens.Explainer(Net(), "layercam", exact=True)


def test_a_callable_layout_reindexes_activations_and_gradients() -> None:
    model, x = Net().eval(), images()
    ids = torch.tensor([1, 2, 3])
    ex = camlens.explain(model, x, "layercam", "features", ids, layout=lambda a: a.flip(-1))
    acts, grads, _ = acts_and_grads(model, x, class_score(ids))
    expected = get_method("layercam").fn(acts.flip(-1), grads.flip(-1))
    assert torch.allclose(ex.raw["features"], expected, atol=1e-6)
    assert not torch.allclose(expected, get_method("layercam").fn(acts, grads), atol=1e-4)


class ChannelsLast(nn.Module):
    """conv -> NHWC -> Sequential(Linear, ReLU) ("mlp"), read at the ReLU: (B, 4, 4, 4), where
    both readings fit the 8 x 8 input and only the Linear before the ReLU says channels-last."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.mlp(self.conv(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


def test_the_layer_before_an_activation_tells_its_layout() -> None:
    model, x = ChannelsLast().eval(), images()
    explainer = camlens.Explainer(model, "gradcam", "mlp.1")
    ex = explainer(x, 1)
    assert explainer.layout("mlp.1") == Layout("channels_last")
    with torch.no_grad():
        a = model.mlp(model.conv(x).permute(0, 2, 3, 1))
    a = a.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.fc(a.mean(dim=(1, 2)))[:, 1].sum(), a)
    expected = get_method("gradcam").fn(a.detach().permute(0, 3, 1, 2), g.permute(0, 3, 1, 2))
    assert torch.allclose(ex.raw["mlp.1"], expected, atol=1e-6)
    with pytest.raises(camlens.LayerError, match="does not say which"):  # without the hint
        infer_layout("mlp.1", (3, 4, 4, 4), (8, 8), model.mlp[1])


class Tokens(nn.Module):
    """A class token and the patches of a 16-pixel conv with no padding, then a norm (the
    explained layer, (B, 1 + h w, 6)) and a linear head on the mean token. On a 100 x 100
    input the patch grid is 6 x 6 (37 tokens), where the input-size fallback would say 5 x 5."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 6, 16, stride=16)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 3)
        self.calls = 0

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1)
        return self.fc(self.norm(t).mean(dim=1))


def test_token_layouts_use_the_patch_grid_and_the_last_call_wins() -> None:
    model = Tokens().eval()
    explainer = camlens.Explainer(model, "gradcam", "norm")
    assert explainer.layout("norm") is None and explainer.layers == ["norm"]
    ex = explainer(torch.randn(2, 3, 100, 100), 0)
    assert explainer.layout("norm") == Layout("tokens", prefix=1, grid=(6, 6))
    assert ex.raw["norm"].shape == (2, 6, 6)
    for size, grid in ((64, (4, 4)), (48, (3, 3))):
        explainer(torch.randn(1, 3, size, size), 0)
        assert explainer.layout("norm") == Layout("tokens", prefix=1, grid=grid)
    assert explainer.layout("patch") is None


def test_the_grid_is_captured_until_the_layout_is_known(monkeypatch) -> None:
    seen: list[bool] = []

    class Recording(camlens.engine.Capture):
        def __init__(self, *args, **kwargs):
            assert kwargs["model"] is model
            seen.append(kwargs["grids"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(camlens.engine, "Capture", Recording)
    model = Tokens().eval()
    explainer = camlens.Explainer(model, "gradcam", "norm")
    for size in (100, 100, 64, 100, 64):
        explainer(torch.randn(1, 3, size, size), 0)
    assert seen == [True, False, True, False, False]


def test_the_explainer_keeps_its_automatic_layer() -> None:
    explainer = camlens.Explainer(Net().eval(), "gradcam")
    assert explainer.layers is None and explainer.layout("features") is None
    explainer(images())
    assert explainer.layers == ["features"]
    assert explainer.layout("features") == Layout("channels_first")
    assert explainer.layout("fc") is None


def test_the_exact_chunk_reaches_the_diagonal_derivatives(monkeypatch) -> None:
    import camlens.engine

    seen: list[object] = []
    real = camlens.engine.diagonal_derivatives

    def spy(*args, **kwargs):
        seen.append(args[3] if len(args) > 3 else kwargs.get("chunk"))
        return real(*args, **kwargs)

    monkeypatch.setattr(camlens.engine, "diagonal_derivatives", spy)
    model, x = Net().eval(), images()
    camlens.explain(model, x, "gradcampp", "features", 1, exact=True)
    camlens.explain(model, x, "gradcampp", "features", 1, exact=True, exact_chunk=5)
    assert seen == [256, 5]

"""camlens.runners: the layer-probe runs (Ablation-CAM, Recipro-CAM) and the model-level runs,
on tiny models whose answers are known by hand, and with a spy method that records what the
runner hands it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

import camlens
from camlens.cams.model_based import ModelResult
from camlens.display import display_maps
from camlens.errors import InputError, LayerError
from camlens.maps import minmax, to_heatmap
from camlens.runners import run_layer_probe, run_model_level, token_layout
from camlens.targets import Selection, Target, select_scores
from tests.conftest import HandNet, raises_whole

W = torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]])
B = torch.tensor([0.5, -0.25])


def acts(seed: int = 0, batch: int = 2) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 2, 3, generator=gen) + 0.1


def ablation_by_hand(a: Tensor, ids: Tensor) -> Tensor:
    """For a GAP + linear head, y - y_k = w_ck F_k: raw = sum_k (w_ck F_k / y) A^k."""
    f = a.mean(dim=(2, 3))
    w = W[ids]
    y = (w * f).sum(1) + B[ids]
    return torch.einsum("bk,bkhw->bhw", w * f / y[:, None], a)


def recipro_by_hand(a: Tensor, ids: Tensor) -> Tensor:
    """raw(i, j) = softmax(W A_ij / Z + b)_c, Z = h w."""
    z = a.shape[2] * a.shape[3]
    logits = torch.einsum("ck,bkhw->bhwc", W, a) / z + B
    return logits.softmax(-1).gather(-1, ids.view(-1, 1, 1, 1).expand(-1, 2, 3, 1))[..., 0]


class ChannelsLast(nn.Module):
    """HandNet on (B, h, w, K) activations: ``features`` outputs channels last."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(W)
            self.fc.bias.copy_(B)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x.permute(0, 2, 3, 1)).mean(dim=(1, 2)))


class Tokens(nn.Module):
    """Patch tokens (a 2 x 3 grid of 1-pixel patches) after a class token that the head reads
    too: ``head(cls + mean(patches))``. The class token holds ``cls``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        self.cls = nn.Parameter(torch.tensor([0.5, 1.0, -0.5]))
        self.features = nn.Identity()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(W)
            self.fc.bias.copy_(B)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.embed(x).flatten(2).transpose(1, 2)
        cls = self.cls.expand(x.shape[0], 1, 3)
        t = self.features(torch.cat([cls, patches], dim=1))
        return self.fc(t[:, 0] + t[:, 1:].mean(1))


def hand() -> HandNet:
    return HandNet(W, B).eval()


# -- the layer probe, end to end --


@pytest.mark.parametrize("target", [None, 1, [0, 1]])
def test_ablationcam_and_reciprocam_by_hand(target) -> None:
    a = acts()
    model = hand()
    ids = model(a).argmax(1) if target is None else torch.as_tensor(target).expand(2)
    for method, by_hand in [("ablationcam", ablation_by_hand), ("reciprocam", recipro_by_hand)]:
        ex = camlens.explain(model, a, method, "features", target)
        expected = by_hand(a, ids)
        assert torch.allclose(ex.raw["features"], expected, rtol=1e-5, atol=1e-6)
        assert torch.allclose(ex.maps, to_heatmap(expected, (2, 3)), atol=1e-5)
        assert torch.equal(ex.targets, ids) and ex.layers == ["features"] and ex.method == method
        assert torch.allclose(ex.scores, model(a).gather(1, ids[:, None])[:, 0].detach())
        assert torch.equal(ex.logits, model(a).detach()) and ex.extras == {}


def test_channels_last_layers_are_permuted_for_the_method_and_back_for_the_rest() -> None:
    a = acts(1)
    ids = torch.tensor([0, 1])
    for method, by_hand in [("ablationcam", ablation_by_hand), ("reciprocam", recipro_by_hand)]:
        ex = camlens.explain(ChannelsLast().eval(), a, method, "features", ids)
        assert torch.allclose(ex.raw["features"], by_hand(a, ids), rtol=1e-5, atol=1e-6)


def test_tokens_keep_their_class_token_when_the_patches_are_modified() -> None:
    a, ids = acts(2), torch.tensor([1, 0])
    model = Tokens().eval()
    cls = model.cls.detach()
    explainer = camlens.Explainer(model, "ablationcam", "features")
    ex = explainer(a, ids)
    assert explainer.layout("features").kind == "tokens"
    f = a.mean(dim=(2, 3))
    y = (W[ids] * (f + cls)).sum(1) + B[ids]  # the class token counts in the score
    expected = torch.einsum("bk,bkhw->bhw", W[ids] * f / y[:, None], a)  # it is never ablated
    assert torch.allclose(ex.raw["features"], expected, rtol=1e-5, atol=1e-6)
    ex = camlens.explain(model, a, "reciprocam", "features", ids)
    logits = (torch.einsum("ck,bkhw->bhwc", W, a) / 6 + W @ cls) + B
    rec = logits.softmax(-1).gather(-1, ids.view(-1, 1, 1, 1).expand(-1, 2, 3, 1))[..., 0]
    assert torch.allclose(ex.raw["features"], rec, rtol=1e-5, atol=1e-6)


def test_the_token_layout_is_found_once_per_input_size(monkeypatch) -> None:
    model = Tokens().eval()
    explainer = camlens.Explainer(model, "reciprocam", "features")
    forwards = []
    original = explainer._forward
    monkeypatch.setattr(
        explainer, "_forward", lambda *a, **k: forwards.append(1) or original(*a, **k)
    )
    first = explainer(acts(3), 0)
    assert forwards == [1]
    again = explainer(acts(3), 0)
    assert forwards == [1] and torch.equal(first.raw["features"], again.raw["features"])
    explainer(torch.rand(1, 3, 3, 2), 0)  # another input size: its own grid
    assert forwards == [1, 1]


def test_several_layers_explain_the_first_layers_target() -> None:
    model = nn.Sequential(nn.Identity(), nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 2))  # fmt: skip
    with torch.no_grad():
        model[4].weight.copy_(W)
        model[4].bias.copy_(B)
    a = acts(4)
    ex = camlens.explain(model.eval(), a, "ablationcam", ["0", "1"])
    ids = model(a).argmax(1)
    expected = ablation_by_hand(a, ids)
    assert ex.layers == ["0", "1"] and torch.equal(ex.targets, ids)
    assert torch.allclose(ex.raw["0"], expected, rtol=1e-5) and torch.allclose(
        ex.raw["1"], expected, rtol=1e-5
    )
    assert torch.allclose(ex.maps, display_maps([expected, expected], (2, 3)), atol=1e-6)


# -- the layer probe, through a spy --


def spy_method(ex: camlens.Explainer, seen: list) -> None:
    def fn(a: Tensor, probe, **options) -> Tensor:
        same = probe.scores(a.shape[0], lambda s, e: (probe.acts[s:e], torch.arange(s, e)))
        seen.append((a, probe, options, same))
        return a.sum(1)

    ex.method = dataclasses.replace(ex.method, fn=fn)


def test_the_probe_handed_to_the_method() -> None:
    model = hand().double()
    a = acts(5).double()
    ex = camlens.Explainer(model, "ablationcam", "features", batch_size=3, seed=11, eps=0.5)
    seen: list = []
    spy_method(ex, seen)
    out = ex(a, 1)
    ((got, probe, options, same),) = seen
    assert got.dtype == torch.float32 and torch.equal(got, a.float())
    assert probe.images is not None and torch.equal(probe.images, a)
    assert torch.equal(probe.acts, a) and probe.input_dtype == torch.float64
    assert torch.equal(probe.targets, torch.tensor([1, 1]))
    assert torch.allclose(probe.base, model(a)[:, 1].detach())
    assert torch.allclose(same, probe.base.float())  # unmodified activations score the base
    assert (probe.batch_size, probe.progress, probe.desc) == (3, False, "ablationcam features")
    assert torch.equal(
        torch.rand(3, generator=probe.generator),
        torch.rand(3, generator=torch.Generator().manual_seed(11)),
    )
    assert options == {"eps": 0.5}
    assert torch.equal(out.raw["features"], a.float().sum(1))


def test_the_probe_of_a_channels_last_layer_and_of_tokens() -> None:
    for model in [ChannelsLast(), Tokens()]:
        ex = camlens.Explainer(model.eval(), "reciprocam", "features", progress=True)
        seen: list = []
        spy_method(ex, seen)
        a = acts(6)
        ex(a, 0)
        ((got, probe, _, same),) = seen
        assert torch.allclose(got, a) and probe.progress is True
        assert torch.allclose(same, probe.base, rtol=1e-6)


def test_a_callable_layout_is_the_users_word() -> None:
    calls = []

    def layout(t: Tensor) -> Tensor:
        calls.append(tuple(t.shape))
        return t

    ex = camlens.Explainer(hand(), "ablationcam", "features", layout=layout)
    a = acts(7)
    out = ex(a, 0)
    assert torch.allclose(out.raw["features"], ablation_by_hand(a, torch.tensor([0, 0])), rtol=1e-5)
    assert ex._layouts == {}  # no layout inferred for the probe
    assert calls == [(2, 3, 2, 3)]


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_a_callable_layout_that_moves_the_axes_is_refused(method) -> None:
    """It cannot be undone to put modified activations back: before, the probe ran on the
    tokens as they came, (B, N, C) read as N channels, and gave a (B, C) "map"."""

    def grid(t: Tensor) -> Tensor:
        return t[:, 1:].transpose(1, 2).reshape(t.shape[0], 3, 2, 3)

    message = (
        "this method re-runs the network after the layer on modified activations of shape "
        "(2, 7, 3), and a callable layout= cannot be undone to put them back; pass "
        "layout='tokens', 'nhwc' or None instead"
    )
    with raises_whole(InputError, message):
        camlens.explain(Tokens().eval(), acts(), method, "features", 0, layout=grid)
    with raises_whole(InputError, message.replace("(2, 7, 3)", "(2, 3, 2, 3)")):
        camlens.explain(hand(), acts(), method, "features", 0, layout=lambda t: t.flip(1))


def test_a_list_of_images_is_refused() -> None:
    ex = camlens.Explainer(hand(), "reciprocam", "features")
    a = acts()
    with raises_whole(InputError, "reciprocam re-runs the network after the layer; pass a tensor"):
        run_layer_probe(ex, a, list(a), 0)
    with raises_whole(InputError, "ablationcam re-runs the network after the layer; pass a tensor"):
        run_layer_probe(camlens.Explainer(hand(), "ablationcam", "features"), a, tuple(a), 0)


def test_a_layer_that_is_no_map_is_refused() -> None:
    message = (
        "ablationcam modifies a feature map, channels-last map or tokens, but layer 'fc' outputs "
        "(2, 2); pick a convolutional layer, block or transformer norm"
    )
    with raises_whole(LayerError, message):
        camlens.explain(hand(), acts(), "ablationcam", "fc", 0)


class Skip(nn.Module):
    """HandNet whose logits also read the input after the layer (a skip connection around it):
    the part after the layer needs a value cached before it, per image."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) + x.mean(dim=(1, 2, 3))[:, None]


@pytest.mark.parametrize("inner", [ChannelsLast, Tokens], ids=["channels-last", "tokens"])
def test_the_rerun_reads_the_cached_values_of_the_modified_images(inner) -> None:
    """Ablation-CAM by hand with a skip term s = mean(x): y = w_c . (f + cls) + b_c + s; the
    re-run of image i's ablated activations must read image i's own s."""
    a, ids = acts(10), torch.tensor([1, 0])
    model = Skip(inner()).eval()
    cls = model.inner.cls.detach() if inner is Tokens else torch.zeros(3)
    ex = camlens.explain(model, a, "ablationcam", "inner.features", ids)
    f = a.mean(dim=(2, 3))
    y = (W[ids] * (f + cls)).sum(1) + B[ids] + a.mean(dim=(1, 2, 3))
    expected = torch.einsum("bk,bkhw->bhw", W[ids] * f / y[:, None], a)
    assert torch.allclose(ex.raw["inner.features"], expected, rtol=1e-5, atol=1e-6)


class Untraceable(nn.Module):
    """HandNet with data-dependent control flow: torch.fx cannot split it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = hand()

    def forward(self, x: Tensor) -> Tensor:
        if bool(x.sum() > -1e9):  # always true, but fx cannot know it
            return self.net(x)
        return -self.net(x)


def test_an_untraceable_model_is_rerun_whole_with_the_layer_replaced() -> None:
    a, ids = acts(11), torch.tensor([0, 1])
    ex = camlens.explain(Untraceable().eval(), a, "ablationcam", "net.features", ids)
    expected = ablation_by_hand(a, ids)
    assert torch.allclose(ex.raw["net.features"], expected, rtol=1e-5, atol=1e-6)


class DictLayer(nn.Module):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"a": x}


def test_a_layer_whose_output_is_no_tensor_is_refused_by_its_type() -> None:
    model = hand()
    model.features = DictLayer()
    model.forward = lambda x: model.fc(model.features(x)["a"].mean(dim=(2, 3)))
    message = (
        "ablationcam modifies a feature map, channels-last map or tokens, but layer 'features' "
        "outputs dict; pick a convolutional layer, block or transformer norm"
    )
    with raises_whole(LayerError, message):
        camlens.explain(model, acts(), "ablationcam", "features", 0)


class Double(nn.Module):
    """Float32 images, a float64 network: the layer's dtype is not the images'."""

    def __init__(self) -> None:
        super().__init__()
        self.net = hand().double()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.double())


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_the_rerun_gets_the_layers_dtype_not_the_images(method) -> None:
    a, ids = acts(12), torch.tensor([1, 0])
    ex = camlens.explain(Double().eval(), a, method, "net.features", ids)
    by_hand = ablation_by_hand if method == "ablationcam" else recipro_by_hand
    assert ex.raw["net.features"].dtype == torch.float32
    assert torch.allclose(ex.raw["net.features"], by_hand(a, ids), rtol=1e-5, atol=1e-6)


# -- model-level methods, through a spy --


def model_spy(ex: camlens.Explainer, seen: list, maps: Tensor | None = None) -> None:
    def fn(call, **options) -> ModelResult:
        seen.append((call, options))
        raw = {"r": call.images.sum(1)[:, :1, :2] - 0.5, "s": call.images[:, 0]}
        return ModelResult(
            raw=raw, maps=maps, scores=torch.tensor([3.0, 4.0]), class_ids=torch.tensor([1, 0]),
            extras={"e": torch.ones(1)},
        )  # fmt: skip

    ex.method = dataclasses.replace(ex.method, fn=fn)


def test_the_model_call_and_the_explanation_of_a_model_level_method() -> None:
    model, a = hand(), acts(8)
    ex = camlens.Explainer(model, "fullgrad", "features", batch_size=5, progress=True, seed=3)
    seen: list = []
    model_spy(ex, seen)
    out = ex(a, 1)
    ((call, options),) = seen
    assert options == {}
    assert call.model is model and call.images is a and call.target == 1
    assert call.layers == [("features", model.features)] and call.layer_auto is False
    assert (call.batch_size, call.progress, call.seed) == (5, True, 3)
    assert call.to_grid is None and call.num_prefix == 0
    logits = model(a).detach()
    scores, ids = call.score(logits)
    assert torch.equal(ids, torch.tensor([1, 1])) and torch.equal(scores, logits[:, 1])
    twice = torch.cat([logits, logits.flip(0), logits])
    scores, ids = call.select(twice, 2)
    assert torch.equal(ids, torch.tensor([1, 1, 1, 1, 1, 1])) and torch.equal(scores, twice[:, 1])
    grad = call.explain("gradcam", call.layers)
    ref = camlens.explain(model, a, "gradcam", "features", 1)
    assert grad.method == "gradcam" and torch.allclose(grad.maps, ref.maps)
    raw = {"r": a.sum(1)[:, :1, :2] - 0.5, "s": a[:, 0]}
    assert out.raw.keys() == raw.keys() and all(torch.equal(out.raw[k], raw[k]) for k in raw)
    assert torch.equal(out.maps, display_maps(list(raw.values()), (2, 3), fuse_one=True))
    assert torch.equal(out.targets, torch.tensor([1, 0])) and torch.equal(
        out.scores, torch.tensor([3.0, 4.0])
    )
    assert out.layers == ["r", "s"] and out.method == "fullgrad"
    assert out.extras.keys() == {"e"} and out.logits is None


def test_maps_given_by_the_method_are_only_normalised() -> None:
    ex = camlens.Explainer(hand(), "fullgrad", "features")
    maps = torch.tensor([[[0.0, 2.0, 4.0]], [[1.0, 1.0, 3.0]]]).expand(2, 2, 3)
    model_spy(ex, [], maps.clone())
    assert torch.equal(ex(acts(), 0).maps, minmax(maps))


def test_a_model_level_method_without_a_layer() -> None:
    ex = camlens.Explainer(hand(), "occlusion")
    seen: list = []
    model_spy(ex, seen)
    ex(acts(), 0)
    ((call, _),) = seen
    assert call.layers == [] and call.layer_auto is True


def test_attention_methods_get_the_token_grid() -> None:
    model = Tokens().eval()
    ex = camlens.Explainer(model, "rollout", "features")
    seen: list = []
    model_spy(ex, seen)
    ex(acts(9), 0)
    ((call, _),) = seen
    layout = ex.layout("features")
    assert layout.kind == "tokens" and layout.prefix == 1
    assert call.num_prefix == 1
    values = torch.arange(14.0).view(2, 7)
    assert torch.equal(call.to_grid(values), values[:, 1:].view(2, 2, 3))


def test_token_layout_is_none_for_maps_and_reused_once_known(monkeypatch) -> None:
    ex = camlens.Explainer(hand(), "rollout", "features")
    ex._layers = [("features", ex.model.features)]
    assert token_layout(ex, acts(), acts()) is None
    tok = camlens.Explainer(Tokens().eval(), "rollout", "features")
    tok._layers = [("features", tok.model.features)]
    layout = token_layout(tok, acts(), acts())
    assert layout.kind == "tokens" and layout.prefix == 1 and tok.layout("features") is layout
    monkeypatch.setattr(tok, "_forward", lambda *a, **k: pytest.fail("a second forward"))
    assert token_layout(tok, acts(), acts()) is layout


def test_model_level_runs_refuse_nothing_the_method_accepts() -> None:
    ex = camlens.Explainer(hand(), "fullgrad", "features")
    seen: list = []
    model_spy(ex, seen)
    ex._layers = [("features", ex.model.features)]
    out = run_model_level(ex, acts(), acts(), 0)
    assert out.method == "fullgrad" and len(seen) == 1


def test_one_model_level_raw_map_is_scaled_as_layercam_too() -> None:
    ex = camlens.Explainer(hand(), "fullgrad", "features")

    def fn(call, **options) -> ModelResult:
        raw = {"r": torch.tensor([[[0.0, 1.0, 2.0], [4.0, 4.0, 4.0]]]).expand(2, 2, 3)}
        return ModelResult(raw, None, torch.zeros(2), torch.zeros(2).long(), {})

    ex.method = dataclasses.replace(ex.method, fn=fn)
    out = ex(acts(), 0)
    t = torch.tanh(torch.tensor([0.0, 0.5, 1.0, 2.0, 2.0, 2.0])) / torch.tanh(torch.tensor(2.0))
    assert torch.allclose(out.maps, t.view(1, 2, 3).expand(2, 2, 3), atol=1e-6)


def test_the_explain_of_a_model_level_method_keeps_the_layout() -> None:
    """Guided Grad-CAM's Grad-CAM is the explainer's, with its layout= (a callable here)."""

    def layout(t: Tensor) -> Tensor:
        return t.movedim(-1, 1).flip(-1)  # channels last to first, columns reversed

    model, a = ChannelsLast().eval(), acts(13)
    ex = camlens.Explainer(model, "guided_gradcam", "features", layout=layout)
    seen: list = []
    model_spy(ex, seen)
    ex(a, 1)
    ((call, _),) = seen
    grad = call.explain("gradcam", call.layers)
    ref = camlens.explain(model, a, "gradcam", "features", 1, layout=layout)
    plain = camlens.explain(model, a, "gradcam", "features", 1)
    assert torch.allclose(grad.raw["features"], ref.raw["features"], atol=1e-6)
    assert not torch.allclose(ref.raw["features"], plain.raw["features"], atol=1e-4)


class Tagged(Target):
    """Class ids with an extra tensor in the selection (as detection targets carry boxes)."""

    def select(self, output, batch, copies=0, score=None):
        sel = select_scores([1, 0], output, batch, copies, score)
        return Selection(sel.scores, sel.ids, {"tag": sel.ids.float() * 10})


def test_the_selections_extras_and_the_methods_options_reach_through() -> None:
    a = acts(14)
    for method in ["ablationcam", "reciprocam", "fullgrad"]:
        ex = camlens.explain(hand(), a, method, "features", Tagged())
        assert torch.equal(ex.extras.pop("tag"), torch.tensor([10.0, 0.0])), method
    ex = camlens.Explainer(hand(), "occlusion", window=2, stride=1)
    seen: list = []
    model_spy(ex, seen)
    ex(a, 0)
    ((_, options),) = seen
    assert options == {"window": 2, "stride": 1}

"""The engine: one forward, autograd only above the layer, the model left as it came."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import camlens
from camlens.engine import preserved_model
from tests.conftest import GapNet, capture, hook_count

GRAD_METHODS = ["gradcam", "gradcampp", "layercam"]


def manual_gradcam(model: nn.Module, prefix: nn.Module, suffix: nn.Module, x, cls):
    """Grad-CAM computed without camlens: split the model by hand at the layer."""
    with torch.no_grad():
        acts = prefix(x)
    acts = acts.clone().requires_grad_(True)
    logits = suffix(acts.clone())
    score = logits[torch.arange(len(cls)), cls].sum()
    (grads,) = torch.autograd.grad(score, acts)
    return (grads.mean(dim=(2, 3), keepdim=True) * acts.detach()).sum(1)


def test_explanation_contract(gapnet, images) -> None:
    ex = camlens.explain(gapnet, images, method="gradcam")
    assert ex.maps.shape == (4, 16, 16) and ex.maps.dtype == torch.float32
    assert float(ex.maps.min()) >= 0 and float(ex.maps.max()) <= 1
    assert ex.layers == ["features"]
    assert ex.raw["features"].shape == (4, 8, 8)
    assert ex.targets.dtype == torch.long and ex.targets.shape == (4,)
    logits = gapnet(images)
    assert torch.equal(ex.targets, logits.argmax(1))
    assert torch.allclose(ex.scores, logits.gather(1, ex.targets[:, None])[:, 0])
    assert not ex.scores.requires_grad
    assert ex.method == "gradcam" and len(ex) == 4


def test_batched_equals_one_by_one_with_per_image_classes(gapnet, images) -> None:
    target = [4, 0, 2, 2]
    for method in ["cam", *GRAD_METHODS]:
        batched = camlens.explain(gapnet, images, method=method, target=target)
        for i in range(len(images)):
            single = camlens.explain(gapnet, images[i : i + 1], method=method, target=target[i])
            assert torch.allclose(batched.raw["features"][i], single.raw["features"][0], atol=1e-6)
            assert torch.allclose(batched.maps[i], single.maps[0], atol=1e-5)


def test_no_graph_below_the_layer_and_none_leaks(gapnet, images) -> None:
    seen: dict[str, bool] = {}
    first, fc = gapnet.features[0], gapnet.fc
    h1 = first.register_forward_hook(lambda *_: seen.__setitem__("below", torch.is_grad_enabled()))
    h2 = fc.register_forward_hook(lambda *_: seen.__setitem__("above", torch.is_grad_enabled()))
    try:
        camlens.explain(gapnet, images, method="gradcam", layer="features")
    finally:
        h1.remove()
        h2.remove()
    assert seen == {"below": False, "above": True}
    assert all(p.grad is None for p in gapnet.parameters())
    assert torch.is_grad_enabled()


def test_backward_is_never_called(gapnet, images, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("camlens must use torch.autograd.grad, not backward()")

    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    for method in GRAD_METHODS:
        camlens.explain(gapnet, images, method=method)


def test_model_state_restored_mixed_modes_and_frozen_params(images) -> None:
    torch.manual_seed(0)
    model = GapNet()
    model.train()
    model.features[0].eval()  # a mixed state, as with frozen batch norms
    model.features[0].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    hooks = hook_count(model)
    for method in ["cam", *GRAD_METHODS]:
        camlens.explain(model, images, method=method)
        assert [m.training for m in model.modules()] == modes
        assert [p.requires_grad for p in model.parameters()] == flags
        assert hook_count(model) == hooks
        assert all(p.grad is None for p in model.parameters())


def test_train_mode_model_is_explained_in_eval_mode(images) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    model.layer4.register_forward_hook(lambda m, i, o: seen.append(m.training))
    seen: list[bool] = []
    model.train()
    ex_train = camlens.explain(model, images, method="gradcam", layer="layer4", target=1)
    model.eval()
    ex_eval = camlens.explain(model, images, method="gradcam", layer="layer4", target=1)
    assert seen == [False, False]
    assert torch.allclose(ex_train.raw["layer4"], ex_eval.raw["layer4"])


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = GapNet()

    def forward(self, x):
        self.net(x)
        raise RuntimeError("boom")


def test_hooks_and_state_restored_after_an_exception(images) -> None:
    model = Exploding().train()
    for method in ["cam", "gradcam"]:
        with pytest.raises(RuntimeError, match="boom"):
            camlens.explain(model, images, method=method, layer="net.features")
        assert hook_count(model) == 0
        assert all(m.training for m in model.modules())
        assert torch.is_grad_enabled()


def test_caller_under_no_grad(gapnet, images) -> None:
    expected = camlens.explain(gapnet, images, method="gradcam").raw["features"]
    with torch.no_grad():
        ex = camlens.explain(gapnet, images, method="gradcam")
        assert not torch.is_grad_enabled()
    assert torch.allclose(ex.raw["features"], expected)


def test_inference_mode_refuses_gradient_methods(gapnet, images) -> None:
    with torch.inference_mode():
        with pytest.raises(camlens.GradientUnavailableError, match="inference_mode"):
            camlens.explain(gapnet, images, method="gradcam")
        camlens.explain(gapnet, images, method="cam")
    assert hook_count(gapnet) == 0


def test_inplace_relu_after_the_layer_vgg() -> None:
    """VGG: features.28 (conv) is followed by ReLU(inplace=True): capture the true conv output."""
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None, num_classes=6).eval()
    x = torch.randn(2, 3, 64, 64)
    cls = torch.tensor([1, 4])
    ex = camlens.explain(model, x, method="gradcam", layer="features.28", target=cls)
    true_out = capture(model, model.features[28], x)
    assert (true_out < 0).any(), "the conv output has negative values the ReLU would zero"

    def suffix(a):
        return model.classifier(torch.flatten(model.avgpool(model.features[29:](a)), 1))

    expected = manual_gradcam(model, model.features[:29], suffix, x, cls)
    assert torch.allclose(ex.raw["features.28"], expected, rtol=1e-4, atol=1e-7)


def test_inplace_relu_densenet() -> None:
    """DenseNet applies F.relu(inplace=True) to `features`' output inside forward()."""
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    ex = camlens.explain(model, x, method="gradcam", layer="features", target=2)

    def suffix(a):
        out = torch.nn.functional.relu(a)
        return model.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(out, 1), 1))

    expected = manual_gradcam(model, model.features, suffix, x, torch.tensor([2]))
    assert torch.allclose(ex.raw["features"], expected, rtol=1e-4, atol=1e-7)


def test_multi_layer_fusion(images) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    ex = camlens.explain(model, images, method="layercam", layer=["layer3", model.layer4])
    assert ex.layers == ["layer3", "layer4"]
    assert ex.raw["layer3"].shape == (4, 1, 1) or ex.raw["layer3"].shape[-1] == 1
    x = torch.randn(2, 3, 96, 96)
    ex = camlens.explain(model, x, method="layercam", layer=["layer3", "layer4"], target=0)
    assert ex.raw["layer3"].shape == (2, 6, 6) and ex.raw["layer4"].shape == (2, 3, 3)
    single3 = camlens.explain(model, x, method="layercam", layer="layer3", target=0)
    single4 = camlens.explain(model, x, method="layercam", layer="layer4", target=0)
    # Each layer's raw map is the same whether it is explained alone or with others.
    assert torch.allclose(ex.raw["layer3"], single3.raw["layer3"], atol=1e-6)
    assert torch.allclose(ex.raw["layer4"], single4.raw["layer4"], atol=1e-6)
    assert ex.maps.shape == (2, 96, 96) and float(ex.maps.max()) == pytest.approx(1.0)
    # The displayed map is the normalised fusion of both layers (not the last layer's map).
    from camlens.fusion import fuse_layers
    from camlens.maps import minmax, to_heatmap

    fused = minmax(fuse_layers([single3.raw["layer3"], single4.raw["layer4"]], (96, 96)))
    assert torch.allclose(ex.maps, fused, atol=1e-6)
    assert not torch.allclose(ex.maps, to_heatmap(single4.raw["layer4"], (96, 96)), atol=1e-2)


def test_explainer_reuses_the_automatic_layer(gapnet, images) -> None:
    explainer = camlens.Explainer(gapnet, "gradcam")
    assert explainer.layers is None
    explainer(images)
    assert explainer.layers == ["features"]
    calls = []
    gapnet.features[0].register_forward_hook(lambda *_: calls.append(1))
    explainer(images)
    assert len(calls) == 1  # no second dry run


def test_callable_target(gapnet, images) -> None:
    ex = camlens.explain(gapnet, images, method="gradcam", target=lambda out: out[:, 2] - out[:, 1])
    assert ex.targets.tolist() == [-1] * 4
    logits = gapnet(images).detach()
    assert torch.allclose(ex.scores, logits[:, 2] - logits[:, 1])
    g2 = camlens.explain(gapnet, images, method="gradcam", target=2).raw["features"]
    g1 = camlens.explain(gapnet, images, method="gradcam", target=1).raw["features"]
    assert torch.allclose(ex.raw["features"], g2 - g1, atol=1e-6)  # Grad-CAM is linear in S


def test_preserved_model_restores_on_error(gapnet) -> None:
    gapnet.train()
    with pytest.raises(ValueError), preserved_model(gapnet):
        assert not gapnet.training
        raise ValueError
    assert gapnet.training


def test_cam_runs_no_gradient_pass(gapnet, images, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("CAM needs no gradient")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    seen = []
    gapnet.fc.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    camlens.explain(gapnet, images, method="cam", layer="features")
    assert seen == [False]


def test_a_zero_gradient_everywhere_warns(images) -> None:
    model = GapNet().eval()
    with torch.no_grad():
        model.fc.weight.zero_()  # as torchvision initialises its ViT heads
    with pytest.warns(UserWarning, match="zero everywhere"):
        ex = camlens.explain(model, images, "gradcam")
    assert not ex.maps.any()


def test_submodules_are_reachable_after_a_plain_import() -> None:
    import subprocess
    import sys

    code = (
        "import sys, camlens; camlens.metrics.pointing_game; camlens.io.load_image; "
        "camlens.models.build_model; camlens.viz.overlay; camlens.demo.shapes; "
        "print(sorted(m for m in ('timm', 'transformers', 'ray', 'pyarrow', 'fastapi') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

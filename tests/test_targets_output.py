"""output(index, sign) and counterfactual(c): scores and maps against hand-written references."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camlens
from camlens import targets as T
from tests.conftest import GapNet, hook_count


def hand_grads(model: nn.Module, x: Tensor, score) -> tuple[Tensor, Tensor]:
    """(A, dS/dA) at ``model.features`` for S = score(output).sum(), without camlens."""
    store: dict[str, Tensor] = {}

    def hook(_m, _i, out):
        store["a"] = out.detach().requires_grad_(True)
        return store["a"]

    handle = model.features.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(score(out).sum(), store["a"])
    return store["a"].detach(), g


def gradcam_ref(a: Tensor, g: Tensor) -> Tensor:
    return (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1)


def layercam_ref(a: Tensor, g: Tensor) -> Tensor:
    return (g.clamp(min=0) * a).sum(dim=1)


@pytest.fixture
def regressor() -> GapNet:
    torch.manual_seed(3)
    return GapNet(classes=3).eval()


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("method, ref", [("gradcam", gradcam_ref), ("layercam", layercam_ref)])
def test_output_column_and_sign_equal_the_hand_reference(
    regressor, images, sign: int, method: str, ref
) -> None:
    ex = camlens.explain(regressor, images, method, target=T.output(1, sign=sign))
    a, g = hand_grads(regressor, images, lambda out: sign * out[:, 1])
    assert torch.allclose(ex.raw["features"], ref(a, g), atol=1e-6)
    assert torch.allclose(ex.scores, sign * regressor(images)[:, 1].detach(), atol=1e-6)
    assert (ex.targets == 1).all()


def test_negative_sign_negates_the_gradcam_map_before_relu(regressor, images) -> None:
    up = camlens.explain(regressor, images, "gradcam", target=T.output(2))
    down = camlens.explain(regressor, images, "gradcam", target=T.output(2, sign=-1))
    assert torch.allclose(down.raw["features"], -up.raw["features"], atol=1e-7)
    assert not torch.allclose(down.maps, up.maps)


def test_scalar_outputs_and_several_columns(images) -> None:
    torch.manual_seed(4)
    one = GapNet(classes=1).eval()
    ex = camlens.explain(one, images, "gradcam", target=T.output())
    assert ex.maps.shape == (4, 16, 16) and (ex.targets == 0).all()
    a, g = hand_grads(one, images, lambda out: out[:, 0])
    assert torch.allclose(ex.raw["features"], gradcam_ref(a, g), atol=1e-6)

    class Flat(nn.Module):  # (B,) outputs: a plain scalar per image
        def __init__(self) -> None:
            super().__init__()
            self.net = one

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)[:, 0]

    flat = camlens.explain(Flat(), images, "gradcam", target=T.output())
    assert torch.allclose(flat.raw["net.features"], ex.raw["features"], atol=1e-7)
    assert (flat.targets == -1).all()

    torch.manual_seed(5)
    three = GapNet(classes=3).eval()
    both = camlens.explain(three, images, "gradcam", target=T.output([0, 2], sign=-1))
    assert both.maps.shape == (4, 2, 16, 16)
    assert both.targets.tolist() == [[0, 2]] * 4
    for t, col in enumerate((0, 2)):
        a, g = hand_grads(three, images, lambda out, c=col: -out[:, c])
        assert torch.allclose(both.raw["features"][:, t], gradcam_ref(a, g), atol=1e-6)


def test_sigmoid_head_negative_class_equals_one_minus_p(images) -> None:
    """d(1 - sigmoid(z)) = sigmoid'(z) d(-z), a positive multiple per image: Grad-CAM's raw map
    of the negative class's probability is that multiple of output(sign=-1)'s, so the
    normalised maps are equal."""
    torch.manual_seed(6)
    binary = GapNet(classes=1).eval()
    neg = camlens.explain(binary, images, "gradcam", target=T.output(sign=-1))
    prob = camlens.explain(binary, images, "gradcam", target=lambda out: 1 - out[:, 0].sigmoid())
    z = binary(images)[:, 0].detach()
    factor = (z.sigmoid() * (1 - z.sigmoid())).view(-1, 1, 1)
    assert torch.allclose(prob.raw["features"], factor * neg.raw["features"], atol=1e-7)
    assert torch.allclose(prob.maps, neg.maps, atol=1e-5)


def test_output_with_a_probe_method_equals_the_class_target(regressor, images) -> None:
    a = camlens.explain(regressor, images, "scorecam", target=T.output(1))
    b = camlens.explain(regressor, images, "scorecam", target=1)
    assert torch.allclose(a.raw["features"], b.raw["features"])


@pytest.mark.parametrize("method, ref", [("gradcam", gradcam_ref), ("layercam", layercam_ref)])
def test_counterfactual_negates_the_gradients(gapnet, images, method: str, ref) -> None:
    """Selvaraju et al. 2017 sec. 5: alpha_k = mean(-dy^c/dA^k)."""
    ex = camlens.explain(gapnet, images, method, target=T.counterfactual(3))
    a, g = hand_grads(gapnet, images, lambda out: out[:, 3])
    assert torch.allclose(ex.raw["features"], ref(a, -g), atol=1e-6)
    assert torch.allclose(ex.scores, -gapnet(images)[:, 3].detach(), atol=1e-6)
    assert (ex.targets == 3).all()
    if method == "gradcam":
        plain = camlens.explain(gapnet, images, method, target=3)
        assert torch.allclose(ex.raw["features"], -plain.raw["features"], atol=1e-7)


def test_counterfactual_of_several_classes_in_one_gradient(gapnet, images) -> None:
    ex = camlens.explain(gapnet, images, "gradcam", target=T.counterfactual(T.top(2)))
    top = gapnet(images).topk(2, dim=1).indices
    assert torch.equal(ex.targets, top) and ex.maps.shape == (4, 2, 16, 16)
    for t in range(2):
        a, g = hand_grads(gapnet, images, lambda out, t=t: -out.gather(1, top[:, t : t + 1]))
        assert torch.allclose(ex.raw["features"][:, t], gradcam_ref(a, g), atol=1e-6)
    table = camlens.explain(gapnet, images, "gradcam", target=T.counterfactual(top))
    assert torch.allclose(table.raw["features"], ex.raw["features"], atol=1e-7)


def test_default_counterfactual_is_the_top_class(gapnet, images) -> None:
    ex = camlens.explain(gapnet, images, "gradcam", target=T.counterfactual())
    assert torch.equal(ex.targets, gapnet(images).argmax(1))


@pytest.mark.parametrize("method", ["scorecam", "cam", "eigencam", "ablationcam"])
def test_negated_targets_refuse_methods_that_ignore_the_sign(gapnet, images, method) -> None:
    for target in (T.counterfactual(1), T.output(1, sign=-1)):
        with pytest.raises(camlens.TargetError, match=r"negates the score.*gradient method"):
            camlens.explain(gapnet, images, method, target=target)
    assert hook_count(gapnet) == 0


def test_bad_output_targets_are_one_clear_line(gapnet, images) -> None:
    with pytest.raises(camlens.TargetError, match="sign must be"):
        T.output(0, sign=0)
    with pytest.raises(camlens.TargetError, match="takes None, an int"):
        T.output("a")
    with pytest.raises(camlens.TargetError, match=r"5 outputs; say which with output\(index=i\)"):
        camlens.explain(gapnet, images, "gradcam", target=T.output())
    with pytest.raises(camlens.TargetError, match=r"out of range.*\[0, 4\]"):
        camlens.explain(gapnet, images, "gradcam", target=T.output(7))
    with pytest.raises(camlens.TargetError, match="is c itself"):
        T.counterfactual(T.counterfactual(1))

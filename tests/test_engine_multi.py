"""Several targets per image: maps (B, T, ...) equal to T separate calls, for every method kind,
in one forward where the method batches its targets (the documented fast paths) and one run
per target column otherwise."""

from __future__ import annotations

import re

import pytest
import torch

import camlens
from camlens.errors import InputError
from camlens.targets import Selection, Target, select_scores, top
from tests.conftest import HandNet, tiny_tv
from tests.engine_models import CubeNet, Net, images

TABLE = [[4, 1], [0, 3], [2, 2]]
W = torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0], [-0.5, 0.5, 2.0]])

# (method, model class, options, batched: True when T targets cost the forwards of one)
CASES = [
    ("gradcam", Net, {}, True),
    ("layercam", Net, {}, True),
    ("shapleycam", CubeNet, {}, False),
    ("smoothgradcampp", Net, {"samples": 2}, False),
    ("cam", Net, {}, True),
    ("eigencam", Net, {}, True),
    ("scorecam", Net, {}, True),
    ("occlusion", Net, {"window": 4, "stride": 4}, True),
    ("layercam", Net, {"smooth": 2}, False),
    ("gradcampp", CubeNet, {"exact": True}, False),
    ("fullgrad", Net, {}, False),
    ("ablationcam", Net, {}, False),
    ("guided_gradcam", Net, {}, False),  # its Grad-CAM re-runs the explainer on the images
]
IDS = [f"{m}-{'-'.join(o)}" for m, _, o, _ in CASES]


def layer_of(method: str) -> str | None:
    return None if method in ("fullgrad", "occlusion") else "features"


def separate(explainer, x, columns):
    """One call per column of the targets, each counted in forward passes."""
    runs, calls = [], []
    for col in columns:
        explainer.model.calls = 0
        runs.append(explainer(x, col))
        calls.append(explainer.model.calls)
    return runs, calls


def warm(model, x, method, options):
    """An explainer whose automatic layer is found already (its dry run not counted)."""
    explainer = camlens.Explainer(model, method, layer_of(method), **options)
    explainer(x)
    return explainer


def assert_stacked(ex, runs) -> None:
    """``ex`` is the T runs stacked on dim 1, field by field."""
    assert torch.allclose(ex.maps, torch.stack([r.maps for r in runs], 1), atol=1e-5)
    assert ex.raw.keys() == runs[0].raw.keys()
    for k in ex.raw:
        assert torch.allclose(ex.raw[k], torch.stack([r.raw[k] for r in runs], 1), atol=1e-5)
    assert torch.equal(ex.targets, torch.stack([r.targets for r in runs], 1))
    assert torch.allclose(ex.scores, torch.stack([r.scores for r in runs], 1), atol=1e-5)
    assert ex.layers == runs[0].layers and ex.method == runs[0].method
    if runs[0].logits is None:
        assert ex.logits is None
    else:
        assert torch.allclose(ex.logits, runs[0].logits, atol=1e-6)


@pytest.mark.parametrize(("method", "cls", "options", "batched"), CASES, ids=IDS)
def test_a_table_of_targets_equals_separate_calls(method, cls, options, batched) -> None:
    model, x = cls().eval(), images()
    explainer = warm(model, x, method, options)
    columns = [[row[t] for row in TABLE] for t in range(2)]
    runs, calls = separate(explainer, x, columns)
    for spec in (TABLE, torch.tensor(TABLE)):
        model.calls = 0
        ex = explainer(x, spec)
        assert ex.maps.shape == (3, 2, 8, 8)
        assert_stacked(ex, runs)
        # batched: the forwards of one target; per column: one selection pass + T runs
        assert model.calls == (calls[0] if batched else 1 + sum(calls)), model.calls


@pytest.mark.parametrize(("method", "cls", "options", "batched"), CASES, ids=IDS)
def test_one_target_per_image_takes_no_extra_pass(method, cls, options, batched) -> None:
    """None, an int, B ints, a (B,) tensor: one target per image, no selection pass."""
    model, x = cls().eval(), images()
    top1 = model(x).argmax(1).tolist()
    explainer = warm(model, x, method, options)
    runs, calls = separate(explainer, x, [None, top1, torch.tensor(top1), 2])
    assert calls[0] == calls[1] == calls[2] == calls[3]
    for r in runs[1:3]:
        assert torch.equal(r.targets, runs[0].targets)
        assert torch.allclose(r.maps, runs[0].maps, atol=1e-6)


@pytest.mark.parametrize("method", ["fullgrad", "ablationcam", "gradcam", "cam", "occlusion"])
def test_top_k_equals_its_classes_given_as_a_table(method) -> None:
    """A target object (top(k)) may select (B, T): per column where the method needs it."""
    model, x = Net().eval(), images()
    options = {"window": 4, "stride": 4} if method == "occlusion" else {}
    table = model(x).topk(2, dim=1).indices
    by_top = camlens.explain(model, x, method, layer_of(method), top(2), **options)
    by_table = camlens.explain(model, x, method, layer_of(method), table, **options)
    assert torch.equal(by_top.targets, table)
    assert torch.allclose(by_top.maps, by_table.maps, atol=1e-6)
    assert torch.allclose(by_top.scores, by_table.scores, atol=1e-6)


@pytest.mark.parametrize("method", ["fullgrad", "ablationcam", "gradcam"])
def test_a_single_column_table(method) -> None:
    """(B, 1) targets: maps (B, 1, H, W), the one run's maps."""
    model, x = Net().eval(), images()
    ex = camlens.explain(model, x, method, layer_of(method), [[4], [0], [2]])
    single = camlens.explain(model, x, method, layer_of(method), [4, 0, 2])
    assert ex.maps.shape == (3, 1, 8, 8) and ex.targets.shape == (3, 1)
    assert torch.allclose(ex.maps[:, 0], single.maps, atol=1e-6)
    assert torch.allclose(ex.scores[:, 0], single.scores, atol=1e-6)


class Tagged(Target):
    """Class ids with an extra tensor in the selection (as detection targets carry boxes)."""

    def __init__(self, ids):
        self.ids = ids

    def select(self, output, batch, copies=0, score=None):
        sel = select_scores(self.ids, output, batch, copies, score)
        return Selection(sel.scores, sel.ids, {"tag": sel.ids.float() * 10})


@pytest.mark.parametrize("method", ["gradcam", "fullgrad", "ablationcam", "scorecam"])
@pytest.mark.parametrize("ids", [[4, 0, 2], TABLE], ids=["one", "table"])
def test_extras_of_the_selection_reach_the_explanation(method, ids) -> None:
    model, x = Net().eval(), images()
    ex = camlens.explain(model, x, method, layer_of(method), Tagged(ids))
    assert torch.equal(ex.extras.pop("tag"), torch.tensor(ids).float() * 10)
    plain = camlens.explain(model, x, method, layer_of(method), ids)
    assert torch.allclose(ex.maps, plain.maps, atol=1e-6)
    assert ex.extras.keys() == plain.extras.keys()  # the method's own (FullGrad's completeness)


def test_scorecam_table_by_hand() -> None:
    """Score-CAM with two classes per image: each column its own softmax over channels."""
    model = HandNet(W, torch.tensor([0.75, -0.5, 0.25])).eval()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    table = [[0, 2], [1, 0]]
    ex = camlens.explain(model, x, "scorecam", "features", table)
    for t in range(2):
        col = camlens.explain(model, x, "scorecam", "features", [row[t] for row in table])
        assert torch.allclose(ex.raw["features"][:, t], col.raw["features"], atol=1e-6)
    assert not torch.allclose(ex.raw["features"][:, 0], ex.raw["features"][:, 1], atol=1e-4)


@pytest.mark.parametrize("method", ["fullgrad", "ablationcam", "gradcam"])
def test_a_table_for_two_images_of_three_channels(method) -> None:
    """B = 2 images of C = 3 channels: the selection pass reads the batch, not the channels."""
    model, x = Net().eval(), images(batch=2)
    explainer = warm(model, x, method, {})
    table = [[4, 1], [0, 3]]
    runs, _ = separate(explainer, x, [[row[t] for row in table] for t in range(2)])
    ex = explainer(x, table)
    assert ex.maps.shape == (2, 2, 8, 8)
    assert_stacked(ex, runs)


class Counted(torch.nn.Module):
    """Counts the forward passes of a model it wraps."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize("method", ["gae", "rollout"])
def test_attention_methods_take_a_table_in_the_forwards_of_one_target(method) -> None:
    """The attention methods batch their T targets: no selection pass, no run per column."""
    model = Counted(tiny_tv().eval())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layer = "model.encoder.layers.encoder_layer_1.ln_1"
    explainer = camlens.Explainer(model, method, layer)
    explainer(x)  # the token layout, found once
    table = [[0, 3], [2, 2]]
    runs, calls = separate(explainer, x, [[row[t] for row in table] for t in range(2)])
    model.calls = 0
    ex = explainer(x, table)
    assert model.calls == calls[0] == calls[1], (model.calls, calls)
    assert_stacked(ex, runs)


class ListNet(Net):
    """Net that also takes a list of same-size (C, H, W) images, as torchvision detectors do."""

    def forward(self, x):
        return super().forward(torch.stack(list(x)) if isinstance(x, (list, tuple)) else x)


def test_a_table_of_targets_for_a_list_of_images_is_refused_by_the_layer_probe() -> None:
    """Column by column, the layer probe still sees the list the model is called with."""
    model, x = ListNet().eval(), images()
    msg = "ablationcam re-runs the network after the layer; pass a tensor"
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        camlens.explain(model, list(x), "ablationcam", "features", TABLE)

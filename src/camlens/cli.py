"""The ``camlens`` command."""

from __future__ import annotations

import argparse
import sys

import torch


def _demo(args: argparse.Namespace) -> int:
    import torchvision

    import camlens

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    images = torch.randn(2, 3, 64, 64)
    for method in camlens.methods():
        ex = camlens.explain(model, images, method=method, target=[0, 3])
        raw = ex.raw[ex.layers[0]]
        print(
            f"{method:10s} layer={ex.layers[0]} raw={tuple(raw.shape)} maps={tuple(ex.maps.shape)}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="camlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain a built-in example")
    demo.add_argument("--out", default="out/demo")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

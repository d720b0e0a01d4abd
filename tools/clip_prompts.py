"""The picture of docs/guides/clip.md: one image, one Grad-CAM map per prompt, side by side.

    python tools/clip_prompts.py [--weights PATH] [--out docs/guides/clip_prompts.png]

open_clip ViT-B-32. camlens stays offline, so without ``--weights`` (a local state dict of
OpenAI's or LAION's ViT-B-32) the model has random weights and the maps show the mechanics
(one map per prompt, one batched gradient), not what a trained CLIP sees.
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image, ImageDraw

import camlens
from camlens.models import build_model
from camlens.viz import overlay

PROMPTS = ["a red circle", "a blue square", "a yellow triangle"]


def scene(size: int = 224) -> Image.Image:
    img = Image.new("RGB", (size, size), (235, 235, 225))
    draw = ImageDraw.Draw(img)
    draw.ellipse((20, 30, 100, 110), fill=(210, 30, 30))
    draw.rectangle((130, 120, 200, 190), fill=(30, 60, 200))
    draw.polygon([(40, 200), (90, 130), (120, 205)], fill=(230, 200, 20))
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=None)
    parser.add_argument("--out", default="docs/guides/clip_prompts.png")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = build_model("open_clip:ViT-B-32", args.weights)
    image = scene()
    x = spec.preprocess([image])
    ex = camlens.explain(spec.model, x, "gradcam", target=camlens.targets.text(PROMPTS, spec.model))
    tiles = [image.resize((224, 224))]
    for p, prompt in enumerate(PROMPTS):
        tile = overlay(x[0], ex.maps[0, p], "jet", 0.45, spec.preset, spec.mean, spec.std)
        draw = ImageDraw.Draw(tile)
        draw.rectangle((0, 0, 224, 16), fill=(0, 0, 0))
        draw.text((4, 2), f"{prompt}  cos {float(ex.scores[0, p]):+.3f}", fill=(255, 255, 255))
        tiles.append(tile.resize((224, 224)))
    sheet = Image.new("RGB", (224 * len(tiles), 224), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (224 * i, 0))
    sheet.save(args.out)
    print(f"wrote {args.out} (layer {ex.layers[0]})")


if __name__ == "__main__":
    main()

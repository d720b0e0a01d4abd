"""Draw docs/guides/yolo_boxes.jpg, the YOLO guide's picture: a YOLOv8n (built offline from its
yaml, random weights) explained box by box with Grad-CAM, each box at its own scale.

    PYTHONPATH=src python tools/yolo_picture.py

The image is a 2 x 2 mosaic of the shapes benchmark (camlens.demo.shapes). The weights are
random (no download, ever), scaled so that boxes and scores vary, as in the tests and the
benchmark: the picture shows what camlens gives for each box, not what a trained YOLO finds.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch
from PIL import Image, ImageDraw

import camlens
from camlens.demo import shapes
from camlens.detection.yolo import load_model
from camlens.testing.yolo import randomise
from camlens.viz import overlay

OUT = Path(__file__).resolve().parents[1] / "docs" / "guides" / "yolo_boxes.jpg"
SCALES = ("P3", "P4", "P5")


def main(boxes: int = 4) -> None:
    torch.manual_seed(0)
    model = load_model("yolov8n.yaml")
    randomise(model)
    tiles, _, _ = shapes(4, seed=5, size=160)
    x = torch.cat([torch.cat([tiles[0], tiles[1]], 2), torch.cat([tiles[2], tiles[3]], 2)], 1)
    x = x[None]  # (1, 3, 320, 320)
    with torch.no_grad():
        y = model(x)[0]
    best = y[0, 4:].amax(0).sort(descending=True).values
    threshold = float(best[boxes * 40])
    ex = camlens.explain(
        model, x, "gradcam", target=camlens.targets.detections(score_threshold=threshold)
    )
    panels = [overlay(x[0], torch.zeros(320, 320), alpha=0.0, preset="none")]
    captions = ["the image"]
    shown: list[int] = []  # the highest box of each class, for variety
    for t in range(int((ex.targets[0] >= 0).sum())):
        if len(shown) < boxes and int(ex.targets[0, t]) not in {
            int(ex.targets[0, s]) for s in shown
        }:
            shown.append(t)
    for t in shown:
        picture = overlay(x[0], ex.maps[0, t], alpha=0.5, preset="none")
        ImageDraw.Draw(picture).rectangle(
            [float(v) for v in ex.extras["boxes"][0, t]], outline=(255, 255, 255), width=3
        )
        panels.append(picture)
        level = SCALES[int(ex.extras["levels"][0, t])]
        captions.append(
            f"box {t + 1}: class {int(ex.targets[0, t])}, score {float(ex.scores[0, t]):.3f}, "
            f"{level}"
        )
    width = 320 * len(panels) + 8 * (len(panels) - 1)
    sheet = Image.new("RGB", (width, 320 + 24), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, caption) in enumerate(zip(panels, captions, strict=True)):
        sheet.paste(panel, (i * 328, 24))
        draw.text((i * 328 + 4, 5), caption, fill=(0, 0, 0))
    sheet.save(OUT, quality=88)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

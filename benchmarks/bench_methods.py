"""The methods of issue 15 side by side with the peers' implementations.

    python benchmarks/bench_methods.py [--device cpu|cuda] [--write BENCHMARKS.md]
        [--batch 8] [--size 224] [--window 16 --stride 8] [--rise-n 4000] [--vit-batch 8]

resnet50 (weights=None, seed 0), ``--batch`` images at ``--size`` px, layer4, each image's top
class: FEM, KPCA-CAM, Seg-Eigen-CAM and Random-CAM against pytorch-grad-cam (median of
``--runs`` round-robin runs after a warm-up), Occlusion against Captum's Occlusion with the same
window, stride and images per forward pass, RISE alone (no peer ships it) - these three run once.
vit_b_16 (weights=None, head re-initialised so that scores vary), ``--vit-batch`` images,
the last block's input norm: Recipro-CAM (no peer ships it) and Ablation-CAM against
pytorch-grad-cam's AblationCAM with its ViT ablation layer (``--vit-peer``: slow on a CPU).
The defaults are the issue's settings; on a 2-core CPU use smaller ones (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import camlens
from _harness import machine, run_round_robin, timed, write_section


def _pgc_targets(ids: torch.Tensor) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(int(c)) for c in ids]


def _cnn_rows(args: argparse.Namespace, dev: str) -> list[tuple[str, str, float, float | None]]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(dev)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    with torch.no_grad():
        ids = model(x).argmax(1)
    have_pgc = importlib.util.find_spec("pytorch_grad_cam") is not None
    rows: list[tuple[str, str, float, float | None]] = []
    peers = {
        "fem": "FEM",
        "kpcacam": "KPCA_CAM",
        "segeigencam": "SegEigenCAM",
        "randomcam": "RandomCAM",
    }
    contenders = {}
    for ours, theirs in peers.items():
        ex = camlens.Explainer(model, ours, "layer4")
        contenders[f"camlens {ours}"] = lambda ex=ex: ex(x, ids)
        if have_pgc and not args.skip_peers:
            import pytorch_grad_cam as pgc

            peer = getattr(pgc, theirs)(model=model, target_layers=[model.layer4])
            contenders[f"pgc {ours}"] = lambda peer=peer: peer(
                input_tensor=x, targets=_pgc_targets(ids)
            )
    results = run_round_robin(contenders, args.runs, 0, dev)
    for ours in peers:
        mine = results[f"camlens {ours}"]
        theirs = results.get(f"pgc {ours}")
        peer_t = theirs.median if theirs is not None and theirs.error is None else None
        rows.append((ours, f"pytorch-grad-cam {peers[ours]}", mine.median, peer_t))

    occ = camlens.Explainer(
        model, "occlusion", window=args.window, stride=args.stride, batch_size=args.per_pass
    )
    t_occ = timed(lambda: occ(x, ids), 1, dev)
    t_cap = None
    if importlib.util.find_spec("captum") and not args.skip_peers:
        from captum.attr import Occlusion

        cap = Occlusion(model)
        per_eval = max(1, args.per_pass // args.batch)

        def captum_occlusion() -> None:
            with torch.no_grad():
                cap.attribute(
                    x,
                    sliding_window_shapes=(3, args.window, args.window),
                    strides=(3, args.stride, args.stride),
                    baselines=0.0,
                    target=ids,
                    perturbations_per_eval=per_eval,
                )

        t_cap = timed(captum_occlusion, 1, dev)
    name = f"occlusion (window {args.window}, stride {args.stride})"
    rows.append((name, "Captum Occlusion", t_occ, t_cap))
    rise = camlens.Explainer(model, "rise", n=args.rise_n, batch_size=args.per_pass)
    rows.append((f"rise (n={args.rise_n})", "none", timed(lambda: rise(x, ids), 1, dev), None))
    return rows


def _vit_rows(args: argparse.Namespace, dev: str) -> list[tuple[str, str, float, float | None]]:
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16(weights=None).eval().to(dev)
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision's head starts at zero
    x = torch.randn(args.vit_batch, 3, 224, 224, device=dev)
    with torch.no_grad():
        ids = vit(x).argmax(1)
    layer = "encoder.layers.encoder_layer_11.ln_1"
    rows: list[tuple[str, str, float, float | None]] = []
    recipro = camlens.Explainer(vit, "reciprocam", layer, batch_size=args.per_pass)
    t_rec = timed(lambda: recipro(x, ids), 1, dev)
    rows.append(("reciprocam (ViT-ReciproCAM)", "none", t_rec, None))
    ablation = camlens.Explainer(vit, "ablationcam", layer, batch_size=args.per_pass)
    t_abl = timed(lambda: ablation(x, ids), 1, dev)
    t_peer = None
    if args.vit_peer and importlib.util.find_spec("pytorch_grad_cam"):
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.ablation_layer import AblationLayerVit

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)

        with pgc.AblationCAM(
            model=vit,
            target_layers=[vit.get_submodule(layer)],
            reshape_transform=tokens,
            ablation_layer=AblationLayerVit(),
            batch_size=args.per_pass,
        ) as peer:
            t_peer = timed(lambda: peer(input_tensor=x, targets=_pgc_targets(ids)), 1, dev)
    rows.append(("ablationcam", "pytorch-grad-cam AblationCAM (ViT layer)", t_abl, t_peer))
    return rows


def _table(rows: list[tuple[str, str, float, float | None]]) -> str:
    lines = [
        "| method | camlens (ms) | peer | peer (ms) | peer / camlens |",
        "|---|---:|---|---:|---:|",
    ]
    for name, peer, mine, theirs in rows:
        ratio = f"{theirs / mine:.1f}x" if theirs else "-"
        peer_ms = f"{theirs * 1e3:.1f}" if theirs else "-"
        lines.append(f"| {name} | {mine * 1e3:.1f} | {peer} | {peer_ms} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--rise-n", type=int, default=4000)
    parser.add_argument("--vit-batch", type=int, default=8)
    parser.add_argument("--per-pass", type=int, default=64, help="images per forward pass")
    parser.add_argument("--vit-peer", action="store_true")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--write")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    dev = args.device
    cnn = _cnn_rows(args, dev)
    text = (
        f"{machine(dev)}; {datetime.date.today()}; camlens' activation methods: median of "
        f"{args.runs} round-robin runs; the re-running methods: one run each.\n\n"
        f"**resnet50 (weights=None)**, batch {args.batch} at {args.size}x{args.size}, layer4, "
        f"top class, {args.per_pass} images per forward pass\n\n{_table(cnn)}\n"
    )
    if not args.skip_vit:
        vit = _vit_rows(args, dev)
        text += (
            f"\n**vit_b_16 (weights=None)**, batch {args.vit_batch} at 224x224, "
            f"`encoder.layers.encoder_layer_11.ln_1`\n\n{_table(vit)}\n"
        )
    print(text)
    if args.write:
        write_section(args.write, f"bench:methods:{dev.split(':')[0]}", text)


if __name__ == "__main__":
    main()

"""The ``camlens`` command: ``demo``, ``demo train``, ``explain``, ``evaluate``, ``batch``,
``methods``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: what was wrong and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"camlens: error: {message} (see '{self.prog} --help')\n")


def _fail(message: str) -> None:
    print(f"camlens: error: {message}", file=sys.stderr)


def _warn_random_weights(args: argparse.Namespace) -> None:
    """A torchvision or timm model without --weights has random weights: say so once."""
    if (
        args.weights is None
        and args.model not in ("demo", "demo-vit")
        and not args.model.startswith("hf:")
        and not (args.model.startswith("ultralytics:") and args.model.lower().endswith(".pt"))
    ):
        how = "PATH" if args.model.startswith("open_clip:") else "DEFAULT or PATH"
        print(
            f"camlens: warning: {args.model} has random weights (pass --weights {how})",
            file=sys.stderr,
        )


def _cmd_demo(args: argparse.Namespace) -> int:
    from camlens.demo.run import run_demo

    out = Path(args.out)
    summary = run_demo(out, model=args.model)
    print(f"model accuracy on shapes(1000, seed=12345): {summary['accuracy']:.1%}")
    print(f"explained at layer {', '.join(summary['layers'])}")
    print(f"{'method':10s} {'pointing':>9s} {'energy':>8s} {'IoU':>6s}")
    for name, row in summary["methods"].items():
        print(
            f"{name:10s} {row['pointing_game']:9.3f} {row['energy_pointing_game']:8.3f} "
            f"{row['iou']:6.3f}"
        )
    for file in ("grid.png", "report.html", "summary.json", "raw_maps.npz"):
        print(f"wrote {out / file}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from camlens.demo.train import train, train_vit

    vit = args.model == "vit"
    out = args.out or f"out/shapes_{args.model}.safetensors"
    steps = args.steps or (400 if vit else 1500)
    if vit:
        result = train_vit(out, seed=args.seed, steps=steps)
    else:
        result = train(out, seed=args.seed, steps=steps)
    extra = f", {result['accuracy_4242']:.1%} on shapes(300, seed=4242)" if vit else ""
    print(
        f"wrote {out}: accuracy {result['test_accuracy']:.1%} on shapes(1000, seed=12345)"
        f"{extra}, {result['seconds']:.0f} s"
    )
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    import camlens

    kinds = {
        "grads": "layer gradients",
        "grads_hvp": "layer gradients + Hessian-vector product",
        "grad_samples": "layer gradients at noisy copies",
        "class_weights": "the linear head's weights, no gradient",
        "acts": "activations only, no gradient",
        "input_probe": "re-runs the model on masked images",
        "layer_probe": "re-runs the network after the layer",
        "model": "whole model (input or attention gradients)",
        "black_box": "re-runs the model on perturbed images, any model",
    }
    names = camlens.methods()
    width = max(map(len, names))
    for name in names:
        info = camlens.method_info(name)
        kind = "attention, no gradient" if name == "rollout" else kinds[info.inputs]
        print(f"{name:{width}s}  {kind}\n{'':{width}s}  {info.paper}")
    return 0


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}-{n}")
    return stems


def _load_noted(path: Path) -> object:
    """:func:`camlens.io.load_image`, with its caveat (first frame of an animation) printed as
    one ``camlens: note:`` line instead of a Python warning."""
    import warnings

    from camlens.io import InputWarning, load_image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        img = load_image(path)
    for w in caught:
        print(f"camlens: note: {w.message}", file=sys.stderr)
    return img


def _cmd_explain(args: argparse.Namespace) -> int:
    import camlens
    from camlens.errors import CamlensError
    from camlens.models import build_model
    from camlens.viz import overlay, save_raw

    try:
        for method in args.method:
            camlens.method_info(method)
        spec = build_model(args.model, args.weights, trust_pickle=args.trust_pickle)
    except CamlensError as exc:
        _fail(str(exc))
        return 2
    _warn_random_weights(args)
    failed = 0
    loaded, paths = [], []
    for path in map(Path, args.images):
        try:
            loaded.append(_load_noted(path))
            paths.append(path)
        except CamlensError as exc:
            _fail(str(exc))
            failed += 1
    if not loaded:
        _fail("no readable image to explain")
        return 1
    device = _device(args.device)
    if spec.task == "detect":  # one overlay per detected box
        from camlens.detection.cli import explain_detector

        code = explain_detector(args, spec, loaded, _unique_stems(paths), paths, device)
        return max(code, 1 if failed else 0)
    model = spec.model.to(device)
    x = spec.preprocess(loaded).to(device)
    out = Path(args.out)
    stems = _unique_stems(paths)
    try:
        if args.prompt or hasattr(model, "encode_text"):
            target, ranks, label = _prompt_target(args, model, x, paths)
        elif isinstance(args.target, tuple):
            target, ranks, label = _output_target(args.target[1], model, x, paths)
        else:
            target, ranks, label = _class_target(args, spec, model, x, paths)
    except CamlensError as exc:
        _fail(str(exc))
        return 2
    out.mkdir(parents=True, exist_ok=True)
    raw: dict[str, torch.Tensor] = {}
    written = 0
    for method in args.method:
        explainer = camlens.Explainer(
            model, method, args.layer, batch_size=args.batch_size, progress=True
        )
        try:
            ex = explainer(x, target)
        except CamlensError as exc:
            _fail(f"{method}: {exc}")
            failed += 1
            continue
        maps, layer_raw = ex.maps, next(iter(ex.raw.values()))
        if maps.ndim == x.ndim - 1:  # one target per image: (B, H, W) -> (B, 1, H, W)
            maps, layer_raw = maps[:, None], layer_raw[:, None]
        for j in range(ranks.shape[1]):
            suffix = f"_top{j + 1}" if ranks.shape[1] > 1 else ""
            raw[f"{method}{suffix}"] = layer_raw[:, j]
            for i, stem in enumerate(stems):
                cls = label(int(ranks[i, j])).replace(" ", "_").replace("/", "_")
                file = out / f"{stem}_{method}{suffix}_{cls}.png"
                overlay(
                    x[i], maps[i, j], args.colormap, args.alpha, spec.preset, spec.mean, spec.std
                ).save(file)
                written += 1
    if raw:
        save_raw(raw, out / "raw_maps.npz")
        noun = "overlay" if written == 1 else "overlays"
        print(f"wrote {written} {noun} and raw_maps.npz to {out}")
    else:
        _fail("no method could explain these images; nothing was written")
    return 1 if failed else 0


def _class_target(args: argparse.Namespace, spec: Any, model: Any, x: torch.Tensor, paths: list):
    """Classifiers: print each image's top classes; explain --target or the top --topk."""
    import camlens
    from camlens.errors import TargetError
    from camlens.models import logits as model_logits

    with torch.no_grad():
        logits = model_logits(model(x))
    probs = logits.softmax(1)
    num_classes = logits.shape[1]
    names = spec.classes if len(spec.classes) == num_classes else []

    def label(c: int) -> str:
        return names[c] if names else f"class {c}"

    if args.target is not None and not 0 <= args.target < num_classes:
        raise TargetError(
            f"--target {args.target} is out of range: the model has {num_classes} classes"
        )
    k = min(args.topk, num_classes)
    top = probs.topk(max(k, 5 if num_classes >= 5 else num_classes), dim=1)
    for i, path in enumerate(paths):
        ranked = ", ".join(
            f"{label(int(c))} {float(p):.3f}"
            for p, c in zip(top.values[i].tolist(), top.indices[i].tolist(), strict=True)
        )
        print(f"{path}: {ranked}")
    if args.target is not None:
        ranks = torch.full((len(paths), 1), args.target, dtype=torch.long, device=x.device)
        return args.target, ranks, label
    # the top k classes in one forward and one batched gradient: maps (B, k, H, W)
    return camlens.targets.top(k), top.indices[:, :k], label


def _prompt_target(args: argparse.Namespace, model: Any, x: torch.Tensor, paths: list):
    """Image-text models: one map per --prompt (cosine similarity), printed best first."""
    import camlens
    from camlens.errors import InputError

    if not args.prompt:
        raise InputError(
            f"{args.model} is an image-text model: say what to look for with --prompt TEXT "
            '(repeat it for several prompts, e.g. --prompt "a dog" --prompt "a cat")'
        )
    if args.target is not None:
        raise InputError("--prompt explains the prompts; drop --target")
    target = camlens.targets.text(args.prompt, model)
    with torch.no_grad():
        sims = target.bind(model)(x)
    prompts = list(args.prompt)
    for i, path in enumerate(paths):
        order = sims[i].argsort(descending=True).tolist()
        ranked = ", ".join(f"{prompts[p]!r} {float(sims[i, p]):.3f}" for p in order)
        print(f"{path}: cosine similarity {ranked}")
    ranks = torch.arange(len(prompts), device=x.device).expand(len(paths), -1)
    return target, ranks, lambda p: prompts[p]


def _output_target(index: int | None, model: Any, x: torch.Tensor, paths: list):
    """Regression and other raw outputs: --target output:INDEX."""
    import camlens
    from camlens.layouts import primary_output

    with torch.no_grad():
        y = primary_output(model(x))
    column = y if y.ndim == 1 else y[:, 0 if index is None else min(index, y.shape[1] - 1)]
    for i, path in enumerate(paths):
        print(f"{path}: output{'' if index is None else f' {index}'} = {float(column[i]):.4f}")
    ranks = torch.full((len(paths), 1), 0 if index is None else index, device=x.device)
    return camlens.targets.output(index), ranks, lambda c: f"output {c}"


def _target_arg(value: str) -> int | tuple[str, int | None]:
    """--target: a class id, or output[:INDEX] for raw outputs (regression)."""
    if value == "output" or value.startswith("output:"):
        index = value.partition(":")[2]
        if index and not index.isdigit():
            raise argparse.ArgumentTypeError(f"output:INDEX needs a column number, got {index!r}")
        return ("output", int(index) if index else None)
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--target takes a class id (an int) or output:INDEX, got {value!r}"
        ) from None


def _device(name: str) -> torch.device:
    """--device -> torch.device; a one-line error when this machine does not have it."""
    from camlens.batch.core import check_device

    return check_device(name)


def _interrupt_on_sigterm() -> object:
    """SIGTERM (what ``kill``, systemd and schedulers send) ends a batch job like Ctrl-C: the
    complete shards are written, the one being filled is dropped, no temporary file stays.
    Returns the previous handler (None where signals cannot be set, off the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _cmd_batch(args: argparse.Namespace) -> int:
    import signal

    previous = _interrupt_on_sigterm()
    try:
        return _run_batch(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]


def _run_batch(args: argparse.Namespace) -> int:
    import camlens.batch

    _warn_random_weights(args)
    summary = camlens.batch.run(
        args.input,
        args.out,
        args.model,
        weights=args.weights,
        methods=args.methods,
        layer=args.layer,
        target=args.target,
        topk=args.topk,
        batch_size=args.batch_size,
        workers=args.workers,
        shard_size=args.shard_size,
        overlays=args.overlays,
        engine=args.engine,
        device=args.device,
        ray_address=args.ray_address,
    )
    print(
        f"{summary.images} images in {summary.shards} shards: {summary.written} written, "
        f"{summary.skipped} already done; output in {summary.out} ({summary.seconds:.1f} s)"
    )
    if summary.errors:
        print(
            f"camlens: warning: {summary.errors} file(s) could not be read, listed in "
            f"{summary.out / 'errors.csv'}",
            file=sys.stderr,
        )
    return 0


def _parse_data(spec: str) -> tuple[str, int | Path]:
    if spec.startswith("shapes:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--data {spec!r}: expected shapes:N with N >= 1 (e.g. shapes:500)")
        return "shapes", n
    return "folder", Path(spec)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import camlens
    from camlens.errors import CamlensError
    from camlens.evaluate import evaluate, folder_data, markdown_table, shapes_data, write_outputs
    from camlens.metrics import black
    from camlens.models import build_model

    try:
        kind, where = _parse_data(args.data)
        names = camlens.methods() if args.methods == ["all"] else args.methods
        for method in names:
            camlens.method_info(method)
        try:
            percentages = [float(p) for p in args.road.split(",") if p.strip()]
        except ValueError:
            percentages = []
        if not percentages or not all(0 <= p <= 100 for p in percentages):
            raise ValueError(
                f"--road {args.road!r}: expected comma-separated percentages in [0, 100], "
                "e.g. 20,50,80"
            )
        if args.steps < 1 or args.batch_size < 1 or args.sanity_images < 1:
            raise ValueError("--steps, --batch-size and --sanity-images must be at least 1")
        if args.sensitivity_samples < 0:
            raise ValueError("--sensitivity-samples must be 0 (skip) or more")
        if not 0 < args.box_threshold <= 1:
            raise ValueError(f"--box-threshold must be in (0, 1], got {args.box_threshold}")
        spec = build_model(args.model, args.weights)
        if kind == "shapes":
            if spec.size != 96 or spec.preset != "none":
                raise ValueError(
                    "shapes:N is the demo model's data (96 x 96, no normalisation); pass "
                    "--data FOLDER for other models"
                )
            data = shapes_data(int(where), instances=args.instances)
        else:
            data = folder_data(
                Path(where),
                spec.size,
                spec.resize,
                spec.preset,
                mean=spec.mean,
                std=spec.std,
                interpolation=spec.interpolation,
                on_skip=lambda line: print(f"camlens: warning: {line}", file=sys.stderr),
            )
    except (CamlensError, ValueError) as exc:
        _fail(str(exc))
        return 2
    _warn_random_weights(args)
    stats = spec.stats
    baseline = 0.0 if stats is None else black(*stats)
    layer = args.layer if args.layer else ("features" if args.model == "demo" else None)
    if isinstance(layer, str) and "," in layer:  # several layers (refinecam, fusion)
        layer = [name.strip() for name in layer.split(",") if name.strip()]
    torch.manual_seed(args.seed)
    model = spec.model.to(_device(args.device))
    out = Path(args.out)
    count = f"{len(names)} method{'s' if len(names) != 1 else ''}"
    print(f"evaluating {count} of {args.model} on {data.description}")
    try:
        results = evaluate(
            model,
            data,
            names,
            layer,
            steps=args.steps,
            road_percentages=percentages,
            baseline=baseline,
            batch_size=args.batch_size,
            sanity_images=args.sanity_images,
            box_threshold=args.box_threshold,
            sensitivity_samples=args.sensitivity_samples,
            seed=args.seed,
            out=out,
            progress=True,
        )
    except CamlensError as exc:  # e.g. a model whose output has no class scores
        _fail(str(exc))
        return 1
    files = write_outputs(results, out)
    if results.get("accuracy") is not None:
        print(f"model accuracy on these images: {results['accuracy']:.1%}")
    print(markdown_table(results), end="")
    for method, error in results["errors"].items():
        _fail(f"{method}: {error}")
    print(f"wrote {len(files)} files to {out} (table.md, table.csv, results.json, plots)")
    return 1 if results["errors"] and not results["methods"] else 0


def _cmd_app(args: argparse.Namespace) -> int:
    from camlens.errors import CamlensError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        from camlens.app.server import serve
    except ImportError as exc:
        _fail(
            f"the app needs its optional extra ({exc.name} is missing): pip install 'camlens[app]'"
        )
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"camlens: warning: --host {args.host} makes the app reachable from other machines; "
            "it has no login, so anyone who reaches it can run the model",
            file=sys.stderr,
        )
    _warn_random_weights(args)
    try:
        serve(args.model, args.weights, args.host, args.port, args.batch_size, args.device)
    except CamlensError as exc:
        _fail(str(exc))
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``camlens`` argument parser, every subcommand included (the CLI reference is
    generated from it)."""
    parser = _Parser(
        prog="camlens",
        description="Class activation maps: see what an image model looked at.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an expected error"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="explain the built-in shapes benchmark (the main job)",
        description="Explain the shipped shapes CNN on 240 generated images (1 and 2 objects) "
        "with cam, gradcam, gradcampp and layercam (--model vit: the shipped hybrid ViT, with "
        "gradcam, gradcampp and layercam at its last block's input norm); measure localisation "
        "against the ground-truth masks; write grid.png, report.html, summary.json and "
        "raw_maps.npz.",
    )
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument(
        "--model", choices=("cnn", "vit"), default="cnn", help="demo model (default: cnn)"
    )
    demo.set_defaults(func=_cmd_demo)
    demo_sub = demo.add_subparsers(dest="demo_command", parser_class=_Parser)
    train = demo_sub.add_parser(
        "train",
        help="retrain the demo model (reproducible from --seed)",
        description="Train the shapes CNN from scratch on freshly generated images and save "
        "safetensors weights (about 5 minutes on 2 CPU cores). --model vit trains the hybrid "
        "ViT's transformer on top of the shipped CNN's frozen features instead (400 steps).",
    )
    train.add_argument(  # SUPPRESS: 'demo --model vit train' keeps the parent's value
        "--model",
        choices=("cnn", "vit"),
        default=argparse.SUPPRESS,
        help="which demo model (default: cnn)",
    )
    train.add_argument(
        "--out", default=None, help="weights file (default: out/shapes_MODEL.safetensors)"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--steps", type=int, default=None, help="batches of 64 images (default: cnn 1500, vit 400)"
    )
    train.set_defaults(func=_cmd_train)

    explain = sub.add_parser(
        "explain",
        help="explain image files with a torchvision model or the demo model",
        description="Explain image files: print each image's top classes and write one "
        "overlay per image, method (and class with --topk) into --out.",
    )
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    explain.add_argument(
        "--model",
        required=True,
        help="a torchvision classifier name (resnet50), 'demo', 'demo-vit', timm:NAME (pip "
        "install camlens[timm]), hf:LOCAL_DIR (a transformers save_pretrained folder, loaded "
        "offline; pip install camlens[hf]) or ultralytics:CONFIG (a YOLO detector from its "
        "yaml, e.g. ultralytics:yolov8n.yaml; one overlay per box; pip install camlens[yolo])",
    )
    explain.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow --model ultralytics:FILE.pt: a pickle, which can run code when loaded; "
        "pass it only for files you trust",
    )
    explain.add_argument(
        "--conf",
        type=float,
        default=0.25,
        help="detectors: explain every box with a class score >= CONF (default 0.25, "
        "Ultralytics' predict default)",
    )
    explain.add_argument(
        "--weights",
        default=None,
        help="DEFAULT (torchvision or timm pretrained: needs the network or a cache) or a "
        ".safetensors/.pth state dict (read without pickle). Default: random init, the demo's "
        "shipped weights, or for hf: the weights in its folder",
    )
    explain.add_argument(
        "--method", nargs="+", default=["gradcam"], help="methods (see 'camlens methods')"
    )
    explain.add_argument("--layer", default=None, help="dotted layer name (default: automatic)")
    explain.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="image-text models (open_clip:NAME): a text prompt to explain; repeat for several",
    )
    group = explain.add_mutually_exclusive_group()
    group.add_argument(
        "--target",
        type=_target_arg,
        default=None,
        help="class id to explain, or output:INDEX for a raw output (regression)",
    )
    group.add_argument("--topk", type=int, default=1, help="explain each image's top K classes")
    explain.add_argument("--out", default="out/explain", help="output folder")
    explain.add_argument("--colormap", default="jet", help="any matplotlib colormap")
    explain.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity in [0, 1]")
    explain.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    explain.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per forward pass for methods that re-run the model (scorecam, ...)",
    )
    explain.set_defaults(func=_cmd_explain)

    ev = sub.add_parser(
        "evaluate",
        help="measure methods: localisation, faithfulness, sanity, time",
        description="Run every method on a data set and measure it: pointing game, energy, "
        "IoU and box localisation (where masks exist), Average Drop / Increase in Confidence / "
        "Win, Deletion / Insertion AUC, ROAD, complexity (entropy), sparseness (Gini), "
        "coherency and ADCC, the MPRT and random-logit sanity checks, max-sensitivity, and ms "
        "per image. Writes table.md, table.csv, results.json and plots into --out; results.json "
        "is updated after every method.",
    )
    ev.add_argument(
        "--model",
        default="demo",
        help="'demo' (default), 'demo-vit', a torchvision name, timm:NAME or hf:LOCAL_DIR",
    )
    ev.add_argument("--weights", default=None, help="as for 'camlens explain'")
    ev.add_argument(
        "--methods", nargs="+", default=["all"], help="method names, or 'all' (default)"
    )
    ev.add_argument(
        "--data",
        default="shapes:500",
        help="shapes:N (the built-in benchmark, with masks) or a folder of images, with "
        "FOLDER/masks/<stem>.png as ground truth where present (default: shapes:500)",
    )
    ev.add_argument("--instances", type=int, default=1, help="objects per shapes image (1 or 2)")
    ev.add_argument(
        "--layer",
        default=None,
        help="dotted layer name, or several separated by commas (default: automatic)",
    )
    ev.add_argument("--out", default="out/evaluate", help="output folder")
    ev.add_argument("--steps", type=int, default=20, help="deletion/insertion steps (default 20)")
    ev.add_argument(
        "--road", default="20,50,80", help="ROAD percentages, comma-separated (default 20,50,80)"
    )
    ev.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    ev.add_argument(
        "--sanity-images", type=int, default=32, help="images for the sanity checks (default 32)"
    )
    ev.add_argument(
        "--sensitivity-samples",
        type=int,
        default=8,
        help="noisy copies per image for max-sensitivity, on the sanity images (0: skip)",
    )
    ev.add_argument(
        "--box-threshold",
        type=float,
        default=0.2,
        help="box localisation: fraction of the map's max that outlines the box (CAM: 0.2)",
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ev.set_defaults(func=_cmd_evaluate)

    batch = sub.add_parser(
        "batch",
        help="explain a whole dataset into sharded Parquet (resumable; local or Ray)",
        description="Explain every image of INPUT and write one Parquet shard per "
        "--shard-size images into --out (one row per image, method and target: source, class, "
        "score, the raw map as float16 and its shape, the top-5 classes), with manifest.json "
        "and errors.csv. Rerun the same command to resume an interrupted job.",
    )
    batch.add_argument(
        "input",
        metavar="INPUT",
        help="a folder (recursive), a glob ('imgs/**/*.jpg'), a text file of paths, or "
        "shapes:N (the built-in images)",
    )
    batch.add_argument("--model", required=True, help="a torchvision classifier name or 'demo'")
    batch.add_argument("--weights", default=None, help="as for 'camlens explain'")
    batch.add_argument("--methods", nargs="+", default=["gradcam"], help="method names")
    batch.add_argument("--out", required=True, help="output folder (resumed if it holds the job)")
    batch.add_argument("--layer", default=None, help="dotted layer name (default: automatic)")
    bgroup = batch.add_mutually_exclusive_group()
    bgroup.add_argument("--target", type=int, default=None, help="class id for every image")
    bgroup.add_argument("--topk", type=int, default=1, help="explain each image's top K classes")
    batch.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    batch.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: spare cores, <= 4)"
    )
    batch.add_argument("--shard-size", type=int, default=1000, help="images per Parquet shard")
    batch.add_argument("--overlays", action="store_true", help="also write overlay PNGs")
    batch.add_argument("--engine", choices=["local", "ray"], default="local")
    batch.add_argument(
        "--ray-address",
        default=None,
        help="with --engine ray: auto or ray://head:10001 (default: start a local Ray)",
    )
    batch.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    batch.set_defaults(func=_cmd_batch)

    methods = sub.add_parser(
        "methods",
        help="list the registered methods and their papers",
        description="List every registered CAM method: its name (what --method and "
        "camlens.explain(method=...) take), whether it needs a gradient pass, and the paper "
        "its formula follows.",
    )
    methods.set_defaults(func=_cmd_methods)

    app = sub.add_parser(
        "app",
        help="a local web page to explore explanations",
        description="Serve a local web page: upload an image (or pick a built-in example), "
        "see the model's top classes, compare methods side by side at any layer, change the "
        "colormap and opacity, download overlays and raw maps. Needs 'pip install camlens[app]'.",
    )
    app.add_argument(
        "--model", default="demo", help="'demo' (default) or a model name as for 'camlens explain'"
    )
    app.add_argument("--weights", default=None, help="as for 'camlens explain'")
    app.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    app.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    app.add_argument(
        "--batch-size", type=int, default=16, help="forward batch of scorecam and friends"
    )
    app.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    app.set_defaults(func=_cmd_app)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``camlens`` with ``argv`` (default: the command line); returns the exit code."""
    args = build_parser().parse_args(argv)
    if getattr(args, "topk", 1) < 1:
        _fail("--topk must be at least 1")
        return 2
    from camlens.errors import CamlensError

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if args.debug:
            raise
        _fail("interrupted (a batch job keeps its finished shards: rerun it to resume)")
        return 130
    except (CamlensError, OSError) as exc:  # expected failures: one line, no traceback
        if args.debug:
            raise
        if isinstance(exc, OSError) and not isinstance(exc, CamlensError) and exc.filename:
            _fail(f"{exc.filename}: {exc.strerror or exc} (check the path and its permissions)")
        else:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 2


if __name__ == "__main__":
    sys.exit(main())

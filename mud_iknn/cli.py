"""The ``mud-iknn`` command line (also ``python -m mud_iknn``).

Subcommands: ``demo``, ``train``, ``eval``, ``count``, ``check``, ``export``, ``labels``, ``bench``;
``mud-iknn CMD --help`` describes each. Exit status: 0 success, 1 an error while running (one line
on stderr: a missing folder or file, a bad checkpoint or annotation), 2 a usage error (bad or
missing arguments, unknown data-set name). ``--debug`` before the subcommand shows the full traceback instead.

The model, training and evaluation code is imported inside the commands, so ``labels`` and
``bench`` work without it and ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main", "build_parser", "error_line", "UsageError"]

PROG = "mud-iknn"


class UsageError(ValueError):
    """Bad command-line input found after parsing (reported like argparse's own errors, exit 2)."""


# ------------------------------------------------------------------ shared pieces

def _project(module: str):
    """``mud_iknn.<module>`` imported on demand; ImportError says which part is missing."""
    try:
        return importlib.import_module(f"mud_iknn.{module}")
    except ImportError as err:
        if err.name in (f"mud_iknn.{module}", None):
            raise ImportError(f"mud_iknn.{module} is not available in this installation ({err})") from None
        raise


def _device(name: str) -> str:
    """--device: "auto" (cuda when torch sees a GPU), "cpu", "cuda" or "cuda:N" (UsageError otherwise)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    index = name[5:] if name.startswith("cuda:") else None
    if name != "cuda" and not (index and index.isdigit()):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: torch sees no CUDA GPU here (use cpu or auto)")
    if index and int(index) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    return name


def _add_dataset_args(parser, *, split_help: str, many_splits: bool = False):
    from .data import DATASETS

    group = parser.add_argument_group("data set")
    group.add_argument("--dataset", required=True, choices=list(DATASETS), metavar="NAME",
                       help="one of: " + ", ".join(DATASETS))
    group.add_argument("--root", type=Path, metavar="DIR",
                       help="the data set's folder as distributed (not for synthetic)")
    group.add_argument("--split", help=split_help, nargs="+" if many_splits else None, metavar="SPLIT")
    group.add_argument("--fold", type=int, metavar="F",
                       help="ucf_cc_50 only: the cross-validation fold, 0..4 (default 0)")
    group.add_argument("--num-images", type=int, metavar="N", help="synthetic only: number of scenes (default 200)")
    group.add_argument("--image-size", type=int, metavar="PX",
                       help="synthetic only: scene side in pixels (default 192)")
    group.add_argument("--data-seed", type=int, metavar="SEED", help="synthetic only: scene seed (default 0)")


def _open_dataset(args, split: Optional[str]):
    """The data set named by the --dataset group of ``args``, split ``split`` (None: the reader's default)."""
    from .data import DATASETS, open_dataset

    info = DATASETS[args.dataset]
    options = {}
    if args.fold is not None:
        if args.dataset != "ucf_cc_50":
            raise UsageError("--fold applies to --dataset ucf_cc_50 only")
        options["fold"] = args.fold
    synthetic = {"num_images": args.num_images, "size": args.image_size, "seed": args.data_seed}
    given = {k: v for k, v in synthetic.items() if v is not None}
    if given and args.dataset != "synthetic":
        raise UsageError("--num-images, --image-size and --data-seed apply to --dataset synthetic only")
    options.update(given)
    if info.needs_root and args.root is None:
        raise UsageError(f"--dataset {args.dataset} needs --root DIR (the data set's folder)")
    if not info.needs_root and args.root is not None:
        raise UsageError(f"--dataset {args.dataset} is generated and takes no --root")
    if split is not None and info.splits is not None and split not in info.splits:
        raise UsageError(f"--dataset {args.dataset} has splits {', '.join(info.splits)}; got {split!r}")
    return open_dataset(args.dataset, args.root, split=split, **options)


def _load_model(path: Path, device: str, window: Optional[int], stride: Optional[int]):
    """(model in eval mode on ``device``, sliding window, stride): the window and stride default to
    the checkpoint's training patch size and validation stride."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    model, config, _extra = _project("train").load_checkpoint(path, map_location="cpu")
    window = window or config.patch_size
    stride = stride or (config.window_stride if window == config.patch_size else max(1, window * 4 // 7))
    return model.to(device).eval(), window, stride


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ------------------------------------------------------------------ labels

def _cmd_labels(args) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from .visualize import save_label_preview

    dataset = _open_dataset(args, args.split)
    kind, stride = args.label_kind, args.stride
    out = args.out
    _make_out_dir(out)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    index = []
    for i in tqdm(range(count), desc="labels", unit="image", disable=None):  # bar only on a terminal
        sample = dataset[i]
        height, width = sample.image.shape[1:]
        size = (-(-int(height) // stride), -(-int(width) // stride))
        label = kind.make(sample.points, size, stride=stride, validate=True, input_size=(height, width))[0].numpy()
        np.save(out / f"{sample.name}.npy", label)
        if not args.no_preview:
            preview = label if stride == 1 else np.kron(label, np.ones((stride, stride), label.dtype))[:height, :width]
            save_label_preview(sample.image, preview, out / f"{sample.name}.png")
        index.append({"name": sample.name, "file": f"{sample.name}.npy", "height": int(size[0]),
                      "width": int(size[1]), "count": float(sample.count), "map_sum": float(label.sum())})
    label_info = kind.to_dict() if stride == 1 else {**kind.to_dict(), "stride": stride}
    with open(out / "labels.json", "w") as f:
        json.dump({"dataset": args.dataset, "split": getattr(dataset, "split", args.split), "label": label_info,
                   "images": index}, f, indent=1)
    print(f"wrote {count} {kind.name} label maps (float32 .npy, H x W{'' if stride == 1 else f' / {stride}'})"
          f"{'' if args.no_preview else ' and previews'} to {out}")
    return 0


def _make_out_dir(out: Path) -> None:
    """``--out`` made (parents too) and writable, before any work; an OSError naming it otherwise."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"--out {out}: cannot create the folder: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: the folder is not writable")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _sigma(text: str):
    if text == "adaptive":
        return text
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'adaptive' or a positive number, got {text}") from None


def _label_parameters() -> dict:
    """Every parameter name of the label kinds -> [(kind class, its field), ...], in registry order."""
    from .label_kinds import KINDS

    names: dict = {}
    for cls in KINDS.values():
        for f in cls.parameters():
            names.setdefault(f.name, []).append((cls, f))
    return names


def _label_option_type(owners):
    """How the command line parses a label parameter's text, from its type and bound in the kinds
    that have it (the loosest of their bounds: each kind checks its own)."""
    import typing

    cls, f = owners[0]
    hint = typing.get_type_hints(cls)[f.name]
    kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    if str in kinds and float in kinds:
        return _sigma
    if kinds == [int]:
        return int
    if kinds == [float]:
        bounds = {g.metadata["bound"] for _, g in owners}
        if None in bounds:
            return float
        return _positive_float if bounds == {"positive"} else _non_negative_float
    return str


def _add_label_options(parser, prefix: str = "") -> None:
    """One option per parameter name of the label kinds (--{prefix}{name}), its help naming each kind
    that has it, with that kind's default; default None (the kind's own)."""
    group = parser.add_argument_group("label options (each applies to the kinds it names)")
    for name, owners in _label_parameters().items():
        cls, f = owners[0]
        helps = "; ".join(f"{c.name}: {g.metadata['help']} (default {'off' if g.default is None else g.default})"
                          for c, g in owners)
        group.add_argument(f"--{prefix}{name.replace('_', '-')}", dest=f"{prefix.replace('-', '_')}{name}",
                           type=_label_option_type(owners), choices=f.metadata["choices"], help=helps,
                           metavar=None if f.metadata["choices"] else name.split("_")[0].upper())


def _label_from_options(kind_name: str, args, prefix: str = ""):
    """The label kind ``kind_name`` with the options of ``args`` given for it; UsageError for an
    option of another kind (it would be ignored) or a value the kind refuses."""
    from .label_kinds import label_kind

    given = {}
    for name, owners in _label_parameters().items():
        value = getattr(args, f"{prefix.replace('-', '_')}{name}")
        if value is None:
            continue
        if kind_name not in [cls.name for cls, _ in owners]:
            kinds = ", ".join(cls.name for cls, _ in owners)
            raise UsageError(f"--{prefix}{name.replace('_', '-')} applies to --kind {kinds}, not {kind_name}")
        given[name] = value
    try:
        return label_kind(kind_name, **given)
    except ValueError as err:  # "label kind K: NAME must be ...": name the option
        message = str(err).partition(": ")[2] or str(err)
        name = message.split(" ")[0]
        raise UsageError(f"--{prefix}{name.replace('_', '-')}{message[len(name):]} (--kind {kind_name})"
                         if name in given else str(err)) from None


# ------------------------------------------------------------------ train

_TRAIN_OVERRIDES = ("steps", "batch_size", "patch_size", "lr", "seed", "device", "out_dir",
                    "checkpoint_every", "eval_every", "backbone", "weights", "num_workers")


def _read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:
                raise ValueError(f"{path}: TOML config files need Python 3.11 or newer; use JSON") from None
            with open(path, "rb") as f:
                return tomllib.load(f)
        with open(path) as f:
            data = json.load(f)
    except (ValueError, OSError) as err:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"cannot read config file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold an object of settings")
    return data


def _apply_set(settings: dict, assignment: str) -> None:
    from ._settings import apply_setting

    try:
        apply_setting(settings, assignment)
    except ValueError as err:
        raise UsageError(f"--set {err}") from None


def _train_settings(args) -> tuple[dict, dict]:
    """(what --preset sets, the settings the other options give: --config < the options < --set)."""
    settings = {}
    if args.config:
        settings = _read_config_file(args.config)
    for name in _TRAIN_OVERRIDES:
        value = getattr(args, name)
        if value is not None:
            settings[name] = str(value) if isinstance(value, Path) else value
    if args.label is not None:
        _apply_set(settings, f"label.kind={json.dumps(args.label)}")
    for name in _label_parameters():
        value = getattr(args, f"label_{name}")
        if value is not None:
            _apply_set(settings, f"label.{name}={json.dumps(value)}")
    for assignment in args.set or ():
        _apply_set(settings, assignment)
    preset = {}
    if args.preset is not None:
        engine = _project("train")
        if args.preset not in engine.PRESETS:
            raise UsageError(f"--preset must be one of {', '.join(engine.PRESETS)}, got {args.preset!r}")
        # the preset made as long as asked (its lr decay moves with the steps unless lr_step is given)
        length = {name: settings[name] for name in ("steps", "lr_step") if name in settings}
        default, made = engine.TrainConfig().to_dict(), engine.PRESETS[args.preset](**length).to_dict()
        preset = {k: v for k, v in made.items() if v != default[k]}
    return preset, settings


def _say_if_budget_spent(result: dict, config) -> None:
    """A line on stderr when the time budget (``config.max_seconds``) ended the training early."""
    if result["step"] < config.steps:
        print(f"{PROG}: training stopped after {result['step']} of {config.steps} steps: its "
              f"{config.max_seconds:g} s budget (max_seconds) is spent", file=sys.stderr)


def _cmd_train(args) -> int:
    from .data import DATASETS

    engine = _project("train")
    preset, given = _train_settings(args)
    settings, step = engine.run_settings(given, args.resume, preset=preset)
    if _is_main_process() and args.resume:
        out_dir = Path(settings.get("out_dir", engine.TrainConfig.out_dir))
        print(f"{PROG} train: " + (f"no checkpoint in {out_dir}: starting a new run" if step is None else
                                   f"resuming {out_dir / engine.CHECKPOINT_NAME} at step {step}"), file=sys.stderr)
    try:
        config = engine.TrainConfig.from_dict(settings)
    except ValueError as err:  # a setting from the options, --config or --set that the run refuses
        raise UsageError(str(err)) from None
    train_set = _open_dataset(args, args.split)
    val_split = args.val_split if args.val_split is not None else DATASETS[args.dataset].eval_split
    val_set = None if val_split in (None, "none") else _open_dataset(args, val_split)
    if not args.no_check and _is_main_process():
        _check_or_fail(args, [train_set, val_set])
    result = engine.train(config, train_set, val_set, resume=args.resume)
    if _is_main_process():
        _say_if_budget_spent(result, config)
        summary = {k: v for k, v in result.items() if k != "model"}
        print(json.dumps(summary, indent=1, sort_keys=True, default=str))
    return 0


# ------------------------------------------------------------------ check

def _bad_files(datasets) -> tuple[int, list]:
    """(images checked, bad files) of the file-backed data sets among ``datasets`` (None and the
    generated ones have no files); of a split without public labels (``labelled`` False:
    NWPU-Crowd's test split) the images only."""
    from .data import AnnotatedImages, check_dataset

    checked, bad = 0, []
    for dataset in datasets:
        if isinstance(dataset, AnnotatedImages):
            checked += len(dataset)
            bad += check_dataset(dataset, annotations=dataset.labelled)
    return checked, bad


def _check_or_fail(args, datasets) -> None:
    """train's and eval's check before their first step: every bad file on stderr, then an error."""
    _, bad = _bad_files(datasets)
    if bad:
        for item in bad:
            print(item, file=sys.stderr)
        raise ValueError(f"{len(bad)} bad file{'s' if len(bad) > 1 else ''} in --dataset {args.dataset} (listed "
                         f"above): fix or remove them, or pass --no-check to start anyway")


def _check_splits(args) -> list:
    """--split's splits, by default every labelled one of the data set (its training, evaluation and
    test splits; the root itself for a folder)."""
    from .data import DATASETS

    if args.split:
        return args.split
    info = DATASETS[args.dataset]
    if info.splits is None:
        return [None]
    return list(dict.fromkeys(s for s in ("train", info.eval_split, info.test_split) if s is not None))


def _cmd_check(args) -> int:
    from .data import DATASETS

    if not DATASETS[args.dataset].needs_root:
        raise UsageError(f"--dataset {args.dataset} is generated: it has no files to check")
    splits = _check_splits(args)
    start = time.perf_counter()
    datasets = [_open_dataset(args, split) for split in splits]
    checked, bad = _bad_files(datasets)
    for item in bad:
        print(item)
    names = ", ".join(s + ("" if getattr(d, "labelled", True) else " (no public labels: images only)")
                      for s, d in zip(splits, datasets) if s) or str(args.root)
    seconds = time.perf_counter() - start
    if bad:
        print(f"{len(bad)} bad file{'s' if len(bad) > 1 else ''} among {checked} images and their annotations "
              f"({names}; {seconds:.1f} s)", file=sys.stderr)
        return 1
    print(f"{checked} images and their annotations read correctly ({names}; {seconds:.1f} s)")
    return 0


# ------------------------------------------------------------------ eval

def _metrics_table(rows: Sequence[tuple[str, dict]]) -> str:
    """MAE, RMSE (printed as the field's "MSE": RMSE) and NAE, and GAME(0..3) where a row has them
    (JHU-Crowd++'s category rows have none: "-")."""
    game = any("game" in m for _, m in rows)
    lines = [f"{'':<24}{'MAE':>10}{'MSE*':>10}{'NAE':>10}" + ("".join(f"{f'GAME({l})':>10}" for l in range(4))
                                                          if game else "")]
    for label, m in rows:
        nae = m.get("nae")
        nae_text = f"{nae:>10.4f}" if isinstance(nae, (int, float)) and math.isfinite(nae) else f"{'-':>10}"
        games = "".join(f"{m['game'][str(l)]:>10.2f}" if "game" in m else f"{'-':>10}" for l in range(4)) \
            if game else ""
        lines.append(f"{label:<24}{m['mae']:>10.2f}{m['rmse']:>10.2f}{nae_text}{games}")
    lines.append("* MSE as crowd-counting papers report it: the root mean squared error")
    return "\n".join(lines)


def _localization_table(rows: Sequence[tuple[str, dict]]) -> str:
    """Precision, recall, F1 and tp / fp / fn per threshold of each row's "localization"."""
    def ratio(v):
        return f"{v:>10.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{'-':>10}"

    lines = [f"{'':<24}{'threshold':>10}{'precision':>10}{'recall':>10}{'F1':>10}{'tp':>9}{'fp':>9}{'fn':>9}"]
    for label, m in rows:
        for name, r in m["localization"].items():
            lines.append(f"{label:<24}{name:>10}{ratio(r['precision'])}{ratio(r['recall'])}{ratio(r['f1'])}"
                         f"{r['tp']:>9}{r['fp']:>9}{r['fn']:>9}")
            label = ""
    return "\n".join(lines)


def _finite_or_null(value):
    """``value`` with every non-finite float (NaN: e.g. NAE without positive counts) as None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _check_json_target(target: Optional[str]) -> None:
    if target and target != "-" and Path(target).is_dir():
        raise UsageError(f"--json {target} is a folder: give a file name")


def _write_json(data, target: str) -> None:
    text = json.dumps(_finite_or_null(json.loads(json.dumps(data, default=float))), indent=1, allow_nan=False)
    if target == "-":
        print(text)
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(text + "\n")


def _cmd_eval(args) -> int:
    from .data import DATASETS

    _check_json_target(args.json)
    split = args.split or DATASETS[args.dataset].test_split
    dataset = _open_dataset(args, split)
    evaluation = _project("evaluate")
    if args.export or args.export_points:
        try:
            evaluation.check_nwpu_ids(dataset)
        except ValueError as err:
            raise UsageError(f"--export / --export-points: {err}") from None
    labels = getattr(dataset, "labelled", True)
    if not args.no_check:
        _check_or_fail(args, [dataset])
    model, window, stride = _load_model(args.checkpoint, _device(args.device), args.window, args.stride)
    _override_localization(model, args)
    metrics = evaluation.evaluate(model, dataset, window=window, stride=stride, progress=args.json != "-",
                                  localization=args.localization or bool(args.export_points), labels=labels)
    if args.export:
        evaluation.write_nwpu_counts(args.export, metrics["per_image"])
    if args.export_points:
        evaluation.write_nwpu_points(args.export_points, metrics["per_image"])
    if not args.localization:
        for record in metrics["per_image"]:
            record.pop("points", None)
    report = {"checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": split,
              "images": len(dataset), "window": window, "stride": stride, **metrics}
    if args.json != "-":
        name = f"{args.dataset} {split or ''}".strip()
        if not labels:
            print(f"{name}: no public labels, predictions only ({len(dataset)} images)")
        else:
            rows = [(name, metrics)] + [(f"  {c} ({m['images']})", m) for c, m in metrics.get("categories", {}).items()]
            print(_metrics_table(rows))
            if args.localization:
                print(_localization_table(rows))
            print(f"({len(dataset)} images)")
        for target in (args.export, args.export_points):
            if target:
                print(f"wrote {target}")
    if args.json:
        _write_json(report, args.json)
    return 0


# ------------------------------------------------------------------ count

def _cmd_count(args) -> int:
    deploy = _project("deploy")
    images, videos = deploy.collect_inputs(args.images)
    if videos and (images or len(videos) > 1):
        raise UsageError("a video is counted on its own: give one video, or images and folders")
    if args.every is not None and not videos:
        raise UsageError("--every applies to a video")
    if videos and args.overlay and args.overlay.suffix.lower() not in _project("video").OVERLAY_CODECS:
        raise UsageError(f"--overlay for a video must be a video file ending in "
                         f"{', '.join(_project('video').OVERLAY_CODECS)}, got {args.overlay}")
    overlays = _overlay_targets(args.overlay, images) if args.overlay and images else {}
    if args.model:
        if args.device.startswith("cuda:"):
            raise UsageError("--device cuda:N: an ONNX model runs on cpu, cuda or auto")
        model, window, stride = deploy.load_onnx(args.model, args.device, args.window, args.stride)
    else:
        model, window, stride = _load_model(args.checkpoint, _device(args.device), args.window, args.stride)
    _override_localization(model, args)
    if videos:
        return _count_video(args, model, videos[0], window, stride)
    results = []
    for result in deploy.count_images(model, images, window=window, stride=stride, overlays=overlays):
        results.append(result)
        if not args.json:
            print(f"{result['image']}\t{result['count']:.1f}", flush=True)
    if args.csv:
        deploy.write_csv(args.csv, results, ("image", "count"))
    if args.json:
        _write_json(results, "-")
    return 0


def _count_video(args, model, path: Path, window: int, stride: int) -> int:
    video = _project("video")
    rows = video.count_video(model, path, window=window, stride=stride, every=args.every or 1,
                             overlay=args.overlay, progress=True)
    if args.csv:
        _project("deploy").write_csv(args.csv, rows, video.CSV_FIELDS)
    if args.json:
        _write_json({"video": str(path), "every": args.every or 1, "frames": rows}, "-")
    elif args.csv:
        counts = [row["count"] for row in rows]
        print(f"{path}: {len(rows)} frames counted, mean {sum(counts) / len(counts):.1f}, max {max(counts):.1f}"
              f" people; per-frame counts in {args.csv}" + (f", overlay video {args.overlay}" if args.overlay else ""))
    else:
        print(",".join(video.CSV_FIELDS))
        for row in rows:
            print(f"{row['frame']},{row['time_s']},{row['count']}")
    return 0


# ------------------------------------------------------------------ export

def _cmd_export(args) -> int:
    report = _project("deploy").export_checkpoint(args.checkpoint, args.out, window=args.window, stride=args.stride)
    print(f"wrote {report['path']}: input image (batch, 3, {report['window']}, {report['window']}) float32 in "
          f"[0, 1], outputs maps and counts, counting stride {report['stride']}; onnxruntime matches torch "
          f"within {report['maps_difference']:.1e} (maps) and {report['counts_difference']:.1e} (counts) relative")
    return 0


def _overlay_targets(overlay: Path, images: Sequence[Path]) -> dict:
    """The overlay file of each image: ``overlay`` itself (a .png) for one image, else
    overlay/<image name>.png, with _2, _3, ... where names repeat (d1/x.jpg, d2/x.png)."""
    if len(images) == 1:
        if overlay.suffix.lower() != ".png":
            raise UsageError(f"--overlay for one image must be a .png file, got {overlay}")
        return {images[0]: overlay}
    if overlay.suffix.lower() == ".png":
        raise UsageError(f"--overlay for {len(images)} images must be a folder, got the file name {overlay}")
    targets, taken = {}, set()
    for image in dict.fromkeys(images):
        name, n = image.stem, 1
        while name in taken:
            n += 1
            name = f"{image.stem}_{n}"
        taken.add(name)
        targets[image] = overlay / f"{name}.png"
    return targets


# ------------------------------------------------------------------ demo

def _cmd_demo(args) -> int:
    from .data import SyntheticCrowds
    from .visualize import save_demo_figure

    start = time.perf_counter()
    engine, evaluation = _project("train"), _project("evaluate")
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    train_set = SyntheticCrowds(args.train_images, size=args.image_size, seed=args.seed, split="train")
    val_set = SyntheticCrowds(args.val_images, size=args.image_size, seed=args.seed, split="val")
    config = engine.TrainConfig.small(seed=args.seed, device=_device(args.device), out_dir=str(out_dir / "run"),
                                      checkpoint_every=0, eval_every=0, progress=False, max_seconds=args.max_seconds,
                                      log_every=100, steps=args.steps)
    print(f"synthetic crowds: {len(train_set)} training and {len(val_set)} validation scenes of "
          f"{args.image_size}x{args.image_size} px; training the small configuration on {config.device}")

    def report(step, record):
        if "loss" in record:
            print(f"step {step:>5}/{config.steps}  loss {record['loss']:.4g}  {time.perf_counter() - start:.0f} s",
                  flush=True)

    result = engine.train(config, train_set, on_step=report)
    _say_if_budget_spent(result, config)
    model = result["model"].eval()
    window, stride = config.patch_size, config.window_stride
    metrics = evaluation.evaluate(model, val_set, window=window, stride=stride, localization=True, thresholds=(8,))
    located = metrics["localization"]["8px"]
    baseline = evaluation.mean_count_baseline(train_set.counts(), val_set.counts())
    print(_metrics_table([(f"mean count ({baseline['prediction']:.1f})", baseline), ("MUD-ikNN", metrics)]))
    print(f"located heads, MUD-ikNN: F1 {located['f1']:.3f} at 8 px (precision {located['precision']:.3f}, "
          f"recall {located['recall']:.3f}); the mean count locates no head")

    sample = val_set[0]
    spec = config.label  # the small configuration trains on ikNN labels
    true_map = spec.make(sample.points, tuple(sample.image.shape[1:]), validate=True)[0]
    prediction = evaluation.predict_image(model, sample.image, window=window, stride=stride)
    figure = save_demo_figure(sample.image, true_map, prediction.iknn_map, sample.points, prediction.points,
                              prediction.count, out_dir / "demo.png")
    _write_json({"model": {k: v for k, v in metrics.items() if k != "per_image"}, "mean_baseline": baseline,
                 "steps": result["step"], "seconds": time.perf_counter() - start, "device": config.device,
                 "train_images": len(train_set), "val_images": len(val_set), "checkpoint": result["checkpoint"]},
                str(out_dir / "demo.json"))
    print(f"figure: {figure}; checkpoint: {result['checkpoint']} ({time.perf_counter() - start:.0f} s in all)")
    if metrics["mae"] >= baseline["mae"]:
        print("the model did not beat the mean-count baseline; train longer (--steps, --max-seconds)",
              file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ bench

def _cmd_bench(args) -> int:
    from .benchmark import report

    return report(args, quick=not args.full)


# ------------------------------------------------------------------ parser

def _add_window_args(parser) -> None:
    parser.add_argument("--window", type=int, metavar="PX",
                        help="sliding window side (default: the checkpoint's training patch size)")
    parser.add_argument("--stride", type=int, metavar="PX",
                        help="sliding window stride (default: the checkpoint's validation stride, 4/7 of the window)")


def _add_locate_args(parser) -> None:
    from .localize import DEFAULT_MIN_DISTANCE, DEFAULT_THRESHOLD

    parser.add_argument("--threshold", type=float, metavar="V",
                        help="localize: map value a located head must exceed (default: the checkpoint's "
                             f"calibrated one, else {DEFAULT_THRESHOLD:g})")
    parser.add_argument("--min-distance", type=int, metavar="PX",
                        help="localize: located heads more than PX pixels apart (default: the checkpoint's "
                             f"calibrated one, else {DEFAULT_MIN_DISTANCE})")


def _override_localization(model, args) -> None:
    """--threshold / --min-distance over the model's calibrated localization settings."""
    given = {key: value for key, value in (("threshold", args.threshold), ("min_distance", args.min_distance))
             if value is not None}
    if given:
        model.localization = {**(getattr(model, "localization", None) or {}), **given}


def _add_no_check(parser) -> None:
    parser.add_argument("--no-check", action="store_true",
                        help="skip reading every image header and annotation before the first step ('mud-iknn "
                             "check')")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__, benchmark, label_kinds

    parser = argparse.ArgumentParser(
        prog=PROG, description="Dense crowd counting with inverse k-nearest-neighbour maps (MUD-ikNN).",
        epilog=f"'{PROG} COMMAND --help' describes a command. Start with '{PROG} demo'.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="train and evaluate a small model on synthetic crowds (CPU, minutes, no downloads)",
        description="Renders a small synthetic crowd set, trains the small configuration (TrainConfig.small(), "
                    "'train --preset small'), prints MAE / RMSE next to a predict-the-mean baseline and the F1 "
                    "of the located heads at 8 px, and writes demo.png (the image with the located and the "
                    "true heads, the true ikNN map, the predicted ikNN map). Uses the GPU when there is one. "
                    "Exits 1 if the model does not beat the baseline.")
    demo.add_argument("--out", type=Path, default=Path("mud-iknn-demo"), metavar="DIR",
                      help="where demo.png, demo.json and the checkpoint go (default: ./mud-iknn-demo)")
    demo.add_argument("--steps", type=int, default=1500,
                      help="training steps, unless --max-seconds runs out first (default 1500: about a minute "
                           "on two idle cores)")
    demo.add_argument("--max-seconds", type=_positive_float, default=100.0, metavar="S",
                      help="training time budget (TrainConfig.max_seconds): training stops at the first "
                           "10-step boundary past it (default 100)")
    demo.add_argument("--train-images", type=int, default=96, help="synthetic training scenes (default 96)")
    demo.add_argument("--val-images", type=int, default=24, help="synthetic validation scenes (default 24)")
    demo.add_argument("--image-size", type=int, default=128, help="scene side in pixels (default 128)")
    demo.add_argument("--seed", type=int, default=0, help="seed of scenes and training (default 0)")
    demo.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    demo.set_defaults(run=_cmd_demo, command_parser=demo)

    train = commands.add_parser(
        "train", help="train a model on a data set",
        description="Trains MUD-ikNN with progress, periodic evaluation on the evaluation split and "
                    "checkpoints. Settings: defaults < --config FILE (JSON or TOML) < the options below < "
                    "--set KEY=VALUE. Works under torchrun (one process per GPU).")
    _add_dataset_args(train, split_help="training split (default: train; for folder: --root itself)")
    train.add_argument("--val-split", help="split evaluated during training (default: the data set's test/val "
                                           "split; 'none' to skip)")
    train.add_argument("--preset", metavar="NAME",
                       help="start from a named configuration instead of the paper's: 'small' (TrainConfig.small(): "
                            "a tiny DenseNet on 64 px patches, minutes on a CPU; --steps moves its lr decay along "
                            "unless lr_step is set)")
    train.add_argument("--config", type=Path, metavar="FILE", help="settings file (.json or .toml)")
    # the defaults named here are TrainConfig's (a test keeps them equal)
    train.add_argument("--steps", type=int, help="training steps (default 300000)")
    train.add_argument("--batch-size", type=int, help="patches per step, per process (default 25)")
    train.add_argument("--patch-size", type=int, help="square training patch side in pixels, a multiple of 32 "
                                                      "(default 224)")
    train.add_argument("--lr", type=_positive_float, help="learning rate (default 0.0001)")
    train.add_argument("--label", choices=list(label_kinds.KINDS),
                       help="map labels the network learns (label.kind): "
                            + "; ".join(f"{name}: {cls.summary}" for name, cls in label_kinds.KINDS.items())
                            + f" (default {label_kinds.IknnLabel.name})")
    train.add_argument("--backbone", help="densenet201 (the paper's, default), densenet121, densenet169 or "
                                          "densenet_tiny")
    train.add_argument("--weights", help="backbone initialisation: 'imagenet' (torchvision's weights, fetched "
                                         "into its cache on first use) or a local state-dict file (default: "
                                         "random)")
    train.add_argument("--num-workers", type=int, metavar="N", help="DataLoader worker processes (default 4)")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    train.add_argument("--out-dir", type=Path, metavar="DIR", help="checkpoints and logs (default runs/mud_iknn)")
    train.add_argument("--checkpoint-every", type=int, metavar="N",
                       help="steps between checkpoints, 0 for the final one only (default 1000)")
    train.add_argument("--eval-every", type=int, metavar="N",
                       help="steps between evaluations, 0 for the final one only (default 0)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="any other setting (VALUE as JSON, dotted KEY for nested settings); repeatable")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out-dir")
    _add_label_options(train, "label-")
    _add_no_check(train)
    train.set_defaults(run=_cmd_train, command_parser=train)

    evaluate = commands.add_parser(
        "eval", help="MAE / RMSE / NAE / GAME (and localization) of a checkpoint on a data set",
        description="Counts every image of the split with sliding windows and prints MAE, RMSE (the 'MSE' of "
                    "crowd-counting papers), NAE and GAME(0..3), per category where the data set defines them "
                    "(JHU-Crowd++: low / medium / high / weather); --localization adds the localization metrics.")
    evaluate.add_argument("--checkpoint", type=Path, required=True, metavar="FILE",
                          help="a checkpoint written by 'mud-iknn train' (its checkpoint.pt)")
    _add_dataset_args(evaluate, split_help="split to evaluate (default: the data set's test split; val for "
                                           "nwpu_crowd, whose test labels are not public)")
    evaluate.add_argument("--json", metavar="FILE",
                          help="also write the metrics and per-image counts as JSON ('-': print only the JSON)")
    evaluate.add_argument("--localization", action="store_true",
                          help="also locate the heads (local maxima of the predicted ikNN maps) and report "
                               "precision / recall / F1 at 4, 8 and 16 px (and at NWPU-Crowd's per-head "
                               "sigma_s / sigma_l where the data set has head boxes); JSON: 'localization', "
                               "and 'points' per image")
    evaluate.add_argument("--export", type=Path, metavar="FILE",
                          help="write NWPU-Crowd's counting submission: one line '<id> <count>' per image "
                               "(also for the test split, whose labels are not public)")
    evaluate.add_argument("--export-points", type=Path, metavar="FILE",
                          help="write NWPU-Crowd's localization submission: one line '<id> <n> x1 y1 ... xn yn' "
                               "(integer pixels) per image")
    _add_window_args(evaluate)
    _add_locate_args(evaluate)
    evaluate.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    _add_no_check(evaluate)
    evaluate.set_defaults(run=_cmd_eval, command_parser=evaluate)

    check = commands.add_parser(
        "check", help="list every bad image or annotation file of a data set",
        description="Reads every annotation and image header of the splits (in parallel worker processes) "
                    "and prints one line per bad file with the reason; exit status 1 if there is one. "
                    "'train' and 'eval' run the same check on their splits before their first step.")
    _add_dataset_args(check, split_help="splits to check (default: every labelled split; for folder: --root "
                                        "itself)", many_splits=True)
    check.set_defaults(run=_cmd_check, command_parser=check)

    count = commands.add_parser(
        "count", help="count the people in images, folders of images or a video",
        description="Images and folders (every image under a folder, recursively): one line per image, path, "
                    "tab, predicted count. A video (.mp4, .avi, .mov, ...): a CSV of per-frame counts (frame, "
                    "time in seconds, count) on stdout or in --csv FILE. The model is a checkpoint or an ONNX "
                    "file from 'mud-iknn export' (run by onnxruntime; pip install \"mud-iknn[deploy]\", which "
                    "also reads videos).")
    count.add_argument("images", nargs="+", type=Path, metavar="INPUT", help="image files, folders or one video")
    source = count.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, metavar="FILE",
                        help="a checkpoint written by 'mud-iknn train' (its checkpoint.pt)")
    source.add_argument("--model", type=Path, metavar="FILE", help="an ONNX file written by 'mud-iknn export'")
    count.add_argument("--overlay", type=Path, metavar="PATH",
                       help="write the image with the located heads next to the predicted ikNN map: a .png "
                            "file for one image, a folder (one <image name>.png each) for several; for a video, "
                            "a video file (.mp4, .mkv, .mov, .avi) of the counted frames with the map and heads")
    count.add_argument("--csv", type=Path, metavar="FILE",
                       help="also write the counts as CSV: image,count for images; frame,time_s,count for a video")
    count.add_argument("--every", type=int, metavar="N", help="a video: count every N-th frame only (default 1)")
    _add_window_args(count)
    _add_locate_args(count)
    count.add_argument("--json", action="store_true",
                       help="print JSON instead of lines: per image 'count' and 'points' (the located heads, "
                            "[x, y] image pixels)")
    count.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    count.set_defaults(run=_cmd_count, command_parser=count)

    export = commands.add_parser(
        "export", help="export a checkpoint's network as ONNX",
        description="Writes the network for one window size as one ONNX file: input 'image' (batch, 3, S, S) "
                    "float32 in [0, 1] (normalisation inside, dynamic batch), outputs 'maps' and 'counts'. "
                    "Checked with onnx's checker and against torch through onnxruntime "
                    "(pip install \"mud-iknn[deploy]\"). Count with it: mud-iknn count IMAGE --model FILE.")
    export.add_argument("--checkpoint", type=Path, required=True, metavar="FILE",
                        help="a checkpoint written by 'mud-iknn train' (its checkpoint.pt)")
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="the ONNX file to write")
    _add_window_args(export)
    export.set_defaults(run=_cmd_export, command_parser=export)

    labels = commands.add_parser(
        "labels", help="export label maps (ikNN, density, FIDT, count) as .npy with preview PNGs",
        description="Writes OUT/<name>.npy (float32, the image's H x W, or ceil(H / S) x ceil(W / S) with "
                    "--stride S), OUT/<name>.png (image | map) and OUT/labels.json (settings, per-image count "
                    "and map sum). Each label kind takes the options of the group below that name it.")
    _add_dataset_args(labels, split_help="split to export (default: train; for folder: --root itself)")
    labels.add_argument("--out", type=Path, required=True, metavar="DIR")
    labels.add_argument("--kind", choices=list(label_kinds.KINDS), default=label_kinds.IknnLabel.name,
                        help="label kind: " + "; ".join(f"{name}: {cls.summary}"
                                                        for name, cls in label_kinds.KINDS.items())
                             + f" (default {label_kinds.IknnLabel.name})")
    labels.add_argument("--stride", type=int, default=1, metavar="S",
                        help="maps at 1/S of the image size, a pixel per S x S image pixels (default 1)")
    _add_label_options(labels)
    labels.add_argument("--limit", type=int, metavar="N", help="export the first N images only")
    labels.add_argument("--no-preview", action="store_true", help="skip the PNG previews")
    labels.set_defaults(run=_cmd_labels, command_parser=labels)

    bench = commands.add_parser(
        "bench", help="run the label benchmarks and print the table",
        description="Times scipy vs the C++ kernel (vs CUDA when a GPU is visible) on clustered crowds and "
                    "prints a markdown table with ratios (mud_iknn.benchmark; quick settings unless --full), "
                    "e.g. --cases img2048_n5000 --k 3 --threads 4 --out t.md.")
    bench.add_argument("--full", action="store_true",
                       help="every case and k = 1, 3, 8 (default: two small cases, k = 3)")
    benchmark.add_arguments(bench)
    bench.set_defaults(run=_cmd_bench, command_parser=bench)
    return parser


def _label_defaults(args) -> None:
    """The labels command's label kind (args.label_kind) from --kind and its options; UsageError
    for an option of another kind (it would be ignored) or a value the kind refuses."""
    args.label_kind = _label_from_options(args.kind, args)


def _check_numbers(args) -> None:
    for name, least in [("steps", 1), ("batch_size", 1), ("patch_size", 1), ("checkpoint_every", 0),
                        ("eval_every", 0), ("num_workers", 0), ("num_images", 1), ("image_size", 1),
                        ("train_images", 1), ("val_images", 1), ("window", 32), ("stride", 1), ("limit", 1), ("every", 1),
                        ("min_distance", 0), ("seed", 0), ("data_seed", 0)]:
        value = getattr(args, name, None)
        if value is not None and value < least:
            why = " (the backbone's largest stride)" if name == "window" else ""
            raise UsageError(f"--{name.replace('_', '-')} must be at least {least}{why}, got {value}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line on ``argv`` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    try:
        _check_numbers(args)
        if args.command == "labels":
            _label_defaults(args)
        return int(args.run(args) or 0)
    except UsageError as err:
        args.command_parser.error(str(err))  # exits 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; --debug shows the traceback
        if args.debug:
            raise
        print(f"{PROG} {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 1
    return 0


_EXPECTED_ERRORS = (FileNotFoundError, ValueError, ImportError, RuntimeError, OSError)


def error_line(err: BaseException) -> str:
    """The one line that tells a user what went wrong: the error's first line, or for an error
    re-raised from a DataLoader worker (whose message is a whole traceback) the original error's
    line; other types than the expected input errors keep their type name (a bug to report)."""
    text = str(err).strip()
    if "Original Traceback (most recent call last):" in text:
        last = text.splitlines()[-1]
        kind, sep, message = last.partition(": ")
        text = message if sep and kind.isidentifier() else last
    line = text.splitlines()[0] if text else ""
    if not isinstance(err, _EXPECTED_ERRORS) or not line:
        line = f"{type(err).__name__}: {line}" if line else type(err).__name__
    return line

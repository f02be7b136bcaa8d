"""Training with labels made per batch on the training device, after augmentation.

Data flow of one step: CrowdSample (any reader) -> :class:`mud_iknn.transforms.TrainTransform`
in DataLoader workers (crop/flip/scale on image and points together) -> :func:`collate_crowd`
(uint8 images + packed points) -> device -> ``config.label.make`` (a kind of
:mod:`mud_iknn.label_kinds`: ikNN, density, FIDT or count maps at the maps' size and stride, on the
GPU when training on a GPU, with the C++ kernel on the CPU) -> model -> :class:`MUDLoss`.
A count-only network (``TrainConfig.map_modules=False``) makes no label maps: its loss is the
count loss alone.

Reproducibility: the order of the samples comes from a seeded ``DistributedSampler`` per epoch and
each sample's augmentation from its own generator seeded by (seed, rank, position in the stream),
so a run does not depend on the number of workers, and :func:`train` with ``resume=True`` continues
a killed run from its last checkpoint exactly as if it had never stopped (bit for bit on the CPU).

Distributed: under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK in the environment) each process
trains a DistributedDataParallel replica on its own shard (NCCL on GPUs, gloo on CPUs); rank 0
writes logs, plots and checkpoints. ``batch_size`` is per process. Validation is shared: each
process counts every world_size-th image and rank 0 gathers the counts (no process waits in a
collective for a whole validation, which NCCL's watchdog would end after its timeout). The
replicas' BatchNorm statistics are rank 0's (DistributedDataParallel's, synced before each
forward) and the end's re-estimation averages those of every process's batches, so that every
process returns the checkpoint's model.

Outputs in ``out_dir``: ``checkpoint.pt`` (the last checkpoint), ``metrics.jsonl`` (one JSON
record per line: ``{"split": "train", "step", "loss", "count_loss", "map_loss", "lr",
"sec_per_step"}`` or ``{"split": "val", "step", "mae", "rmse", "nae"}``), ``curves.png``.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from . import _settings, label_kinds
from .evaluate import calibrate_localization, count_metrics, evaluate
from .label_kinds import IknnLabel, LabelKind
from .loss import MUDLoss
from .model import MUDIKNN
from .transforms import TrainTransform, collate_crowd

__all__ = ["TrainConfig", "PRESETS", "WeightAverage", "reestimate_batchnorm", "train", "run_settings", "build_model",
           "save_checkpoint", "load_checkpoint", "read_checkpoint", "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "RESUMABLE"]

CHECKPOINT_FORMAT = "mud_iknn.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "curves.png"


@dataclass
class TrainConfig:
    """Everything a run depends on; JSON-able through :meth:`to_dict` / :meth:`from_dict`.

    Defaults are the authors': 224 patches, flip p = 0.5, batch 25, Adam lr 1e-4, lr x0.1 every
    100k steps, BatchNorm frozen, DenseNet-201, ikNN labels with k = 1, lambda = 1.

    steps: optimiser steps in all. batch_size: patches per step and process. patch_size: the
    square crop (pixels), also the model's ``input_size`` and the evaluation window.
    lr, lr_step, lr_gamma, weight_decay: Adam and its step schedule (x lr_gamma every lr_step
    optimiser steps; see max_seconds).
    average_decay: None, or the decay d in (0, 1) of an exponential moving average of the weights
    (:class:`WeightAverage`) that validation, calibration, the checkpoint's predicting weights and
    the returned model use instead of the last step's. Configurations saved without it load None.
    average_bn_batches: training with an average and BatchNorm trained ends by re-estimating the
    average's BatchNorm statistics on this many further training batches
    (:func:`reestimate_batchnorm`): averaged statistics are not those of the averaged weights.
    0 keeps the averaged ones.
    label: which labels the map modules learn: a kind of :mod:`mud_iknn.label_kinds` (e.g.
    ``FidtLabel()``), or its dict ``{"kind": "fidt", ...}``; saved with its parameters (checkpoints
    of the flat form before the registry load too). map_weight: lambda.
    flip_p, scale_range: augmentation (see :class:`TrainTransform`).
    amp: float16 autocast + gradient scaling, used only on CUDA. grad_clip: max gradient norm or None.
    seed: seeds model init, sample order and augmentation. deterministic: ask torch for
    deterministic kernels (warn_only: ops without one warn; the label engine's kernels are).
    num_workers: DataLoader worker processes. device: "auto" (cuda if available), "cpu", "cuda".
    out_dir: where checkpoints, metrics and plots go. checkpoint_every, eval_every, log_every:
    in steps (0 turns checkpoints / periodic evaluation off; a final checkpoint is always written).
    eval_stride: sliding-window stride for validation (None: patch_size * 4 // 7, 128 for 224);
    eval_limit: validate on the first images only.
    backbone, weights, label_size, normalization, frozen_batchnorm: the model (see
    :class:`mud_iknn.model.MUDIKNN`); backbone="densenet_tiny" with patch_size 64-128 is the small
    configuration that trains on a CPU in minutes.
    map_modules: True (default) for the full network; False for the count-only network (the final
    count head alone; no label maps are made, ``label`` and ``map_weight`` are then unused).
    Configurations saved without this field load with True.
    progress: a progress bar on rank 0.
    calibrate_images: training ends by choosing the localize threshold and min_distance on this many
    training images (:func:`mud_iknn.evaluate.calibrate_localization`), stored in the checkpoint;
    0 keeps the fixed defaults. Networks without map modules skip it. Configurations saved without
    this field load with 16.
    cache_samples: keep each training sample (its decoded image and points) in memory after its
    first read, in each loader process, instead of reading it again for every patch: the same
    patches (bit for bit), less work per step on a small set of whole images, the set's decoded
    size in memory per process. Configurations saved without this field load with False.
    max_seconds: None, or a budget of wall-clock seconds for the training steps, counted from the
    start of :func:`train`: past it the run stops at the next multiple of 10 steps and ends as a
    finished one does (BatchNorm re-estimation, validation, calibration, final checkpoint); the
    result's and the checkpoint's ``step`` say how many ran, and resuming goes on towards
    ``steps``. The lr decays at lr_step / steps of the steps or of the budget, whichever comes
    first. Configurations saved without this field load with None.
    """

    steps: int = 300_000
    batch_size: int = 25
    patch_size: int = 224
    lr: float = 1e-4
    lr_step: int = 100_000
    lr_gamma: float = 0.1
    weight_decay: float = 0.0
    average_decay: Optional[float] = None
    average_bn_batches: int = 100
    label: LabelKind = field(default_factory=IknnLabel)
    map_weight: float = 1.0
    flip_p: float = 0.5
    scale_range: Optional[tuple] = None
    amp: bool = True
    grad_clip: Optional[float] = None
    seed: int = 0
    deterministic: bool = False
    num_workers: int = 4
    device: str = "auto"
    out_dir: str = "runs/mud_iknn"
    checkpoint_every: int = 1000
    eval_every: int = 0
    log_every: int = 50
    eval_stride: Optional[int] = None
    eval_limit: Optional[int] = None
    backbone: str = "densenet201"
    weights: Optional[str] = None
    label_size: Optional[int] = None
    normalization: str = "imagenet"
    frozen_batchnorm: bool = True
    map_modules: bool = True
    progress: bool = True
    calibrate_images: int = 16
    cache_samples: bool = False
    max_seconds: Optional[float] = None

    def __post_init__(self):
        if isinstance(self.label, dict):
            self.label = label_kinds.from_dict(self.label)
        if not isinstance(self.label, LabelKind):
            raise ValueError(f"train config label must be a label kind or a dict of its settings (e.g. "
                             f"{{\"kind\": \"density\"}}, --set label.kind=density), got {self.label!r}")
        if self.scale_range is not None:
            if not (isinstance(self.scale_range, (list, tuple)) and len(self.scale_range) == 2 and
                    all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.scale_range)):
                raise ValueError(f"train config scale_range must be null or a pair of numbers [low, high], "
                                 f"got {self.scale_range!r}")
            self.scale_range = tuple(float(v) for v in self.scale_range)
        _settings.check_types(self, "train config")
        for name in ("steps", "batch_size", "patch_size", "lr_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("checkpoint_every", "eval_every", "log_every", "num_workers", "calibrate_images",
                     "average_bn_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.patch_size % 32:
            raise ValueError(f"patch_size must be a multiple of 32 (the backbone's largest stride), "
                             f"got {self.patch_size}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2^32), got {self.seed}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.average_decay is not None and not 0 < self.average_decay < 1:
            raise ValueError(f"average_decay must be null or in (0, 1), got {self.average_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.eval_stride is not None and not 1 <= self.eval_stride <= self.patch_size:
            raise ValueError(f"eval_stride must be null or in [1, patch_size = {self.patch_size}], "
                             f"got {self.eval_stride}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"eval_limit must be null or a positive integer, got {self.eval_limit}")
        if self.max_seconds is not None and not (self.max_seconds > 0 and math.isfinite(self.max_seconds)):
            raise ValueError(f"max_seconds must be null or a positive number of seconds, got {self.max_seconds!r}")

    @classmethod
    def small(cls, **overrides) -> "TrainConfig":
        """The small configuration (``mud-iknn train --preset small``, the demo, the experiments):
        minutes on a CPU. The "densenet_tiny" backbone on 64 px patches, batch 24, 4800 steps, Adam
        lr 3e-3 (x0.1 after 3700), the map loss weighted 0.001, BatchNorm trained, predicting with
        the moving average of the weights (decay 0.996; its BatchNorm statistics re-estimated on
        100 batches at the end, ``average_bn_batches``), the training samples kept in memory
        (``cache_samples``), no worker processes, no AMP, on the CPU, a checkpoint every 1000 steps,
        validation at the end only, and a 200 s budget for the steps (``max_seconds``; on a CPU
        slower than the one measured below the run ends sooner, within the preset's 4 minutes).
        ``overrides`` set any field; ``steps`` without ``lr_step`` moves the lr decay with it
        (:meth:`with_steps`: at 3700 / 4800 of the run).
        """
        # BatchNorm trained, not frozen (the paper's setting, whose statistics here would be those of
        # a random initialisation), by measurement on SyntheticCrowds (96 training / 24 validation
        # scenes of 128 px, 800 steps, seeds 0-2; bench/RESULTS.md, "The small configuration"):
        # F1 at 8 px of the located heads 0.73 +- 0.03 trained against 0.61 +- 0.04 frozen, better
        # on every seed; count MAE within the spread over seeds (33.7 +- 3.2 against 34.5 +- 2.6).
        # The weight average (decay 0.996: about the last 250 steps), the samples cached (each step
        # then costs the network alone, no image decoding), batch 24, and 4800 steps (lr x0.1 after
        # 3700) once the network's step got faster, by measurement on three ShanghaiTech-sized
        # synthetic sets (bench/bench_small_preset.py --seed 0, 1, 2; bench/RESULTS.md, sessions 8
        # and 9): count MAE 8.30 / 15.13 / 9.47 against 9.53 / 14.31 / 12.02 for 3100 steps (lr x0.1
        # after 2400) and 10.31 / 18.68 / 11.52 for batch 16, 2600 steps, uncached; F1 at 8 px 0.888
        # / 0.883 / 0.886 against 0.855-0.859; 185-190 s of CPU time (one thread).
        # map_weight 0.001, not the paper's 1: on 64 px ikNN maps the squared-L1 map loss is about
        # 5000 at the end of training against a count loss of about 1, so the maps drew nearly all of
        # the backbone's gradient. Same three sets (session 10): count MAE 5.68 / 10.62 / 6.67 against
        # 8.30 / 15.13 / 9.47 with weight 1 (0.01: 13.51, 0.003: 11.68, 1e-4: 13.90 on the second set),
        # F1 at 8 px 0.868 / 0.870 / 0.867 against 0.883-0.888 (1e-4: 0.781).
        # lr 3e-3 (session 11, same sets, 4800 steps): count MAE 4.66 / 8.74 / 6.49 and F1 0.903 /
        # 0.901 / 0.909 against 5.65 / 10.45 / 6.39 and 0.867-0.870 at 1e-3 (1.5e-3: mean MAE 7.22,
        # 2e-3: 7.01, 3e-3: 6.63, 5e-3: 7.33 with 9.07 on the third set; F1 rising throughout).
        # max_seconds 200: the whole `train --preset small` took 183 s on 2 cores in session 10 and
        # 255 s on the same VM on a slower day (session 11); with the budget 212-215 s there, MAE
        # 6.27 / 10.49 / 6.40 (at lr 1e-3) after 4450-4750 steps, the lr decayed at its fraction of
        # the budget.
        values = dict(backbone="densenet_tiny", patch_size=64, batch_size=24, steps=4800, lr=3e-3, lr_step=3700,
                      map_weight=1e-3, average_decay=0.996, frozen_batchnorm=False, amp=False, num_workers=0,
                      device="cpu", checkpoint_every=1000, eval_every=0, log_every=50, cache_samples=True,
                      max_seconds=200.0)
        steps = overrides.pop("steps", values["steps"])
        keeps_decay = "lr_step" in overrides
        values.update(overrides)
        config = cls(**values)
        return dataclasses.replace(config, steps=steps) if keeps_decay else config.with_steps(steps)

    def with_steps(self, steps: int) -> "TrainConfig":
        """The same run made ``steps`` long, its lr decay at the same fraction of it."""
        longer = dataclasses.replace(self, steps=steps)  # steps validated first
        return dataclasses.replace(longer, lr_step=max(1, round(steps * self.lr_step / self.steps)))

    @property
    def window_stride(self) -> int:
        return self.eval_stride if self.eval_stride is not None else max(1, self.patch_size * 4 // 7)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["label"] = self.label.to_dict()
        if self.scale_range is not None:
            data["scale_range"] = list(self.scale_range)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _settings.from_dict(cls, data, "train config")


#: Named configurations (``mud-iknn train --preset NAME``): name -> a function of overrides.
PRESETS = {"small": TrainConfig.small}


def build_model(config: TrainConfig, load_weights: bool = True) -> MUDIKNN:
    """The MUD-ikNN network ``config`` describes (the count-only one for map_modules=False); with
    load_weights=False randomly initialised whatever config.weights says (for a checkpoint's
    weights to replace)."""
    return MUDIKNN(weights=config.weights if load_weights else None, label_size=config.label_size,
                   normalization=config.normalization, backbone=config.backbone,
                   input_size=config.patch_size, frozen_batchnorm=config.frozen_batchnorm,
                   map_modules=config.map_modules)


class WeightAverage:
    """Exponential moving average of a model's weights, its horizon growing over the first steps.

    The first :meth:`update` copies the weights w_1; the t-th (t >= 2) sets
    A_t = d_t A_(t-1) + (1 - d_t) w_t with d_t = min(``decay``, (1 + t) / (10 + t)), for each
    floating-point parameter and buffer of :attr:`model` (BatchNorm's running statistics
    included): about the last 1 / (1 - decay) steps count, and in a short run (t below about
    10 / (1 - decay)) about the last t / 9, so that neither the initial weights nor those of the
    first steps linger. Other buffers (BatchNorm's step counters) are the last step's.
    :attr:`model` is a copy of the model given, in eval mode, without gradients.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay, self.updates = float(decay), 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs: Optional[tuple] = None  # (model, its tensors paired with the average's), see _tensors

    def _tensors(self, model: torch.nn.Module) -> tuple[list, list, list, list]:
        """The average's and ``model``'s floating-point tensors, then their other buffers, paired in
        order; gathered once per model (walking the modules costs more than the update itself)."""
        if self._pairs is None or self._pairs[0] is not model:
            averages = [*self.model.parameters(), *self.model.buffers()]
            currents = [*model.parameters(), *model.buffers()]
            if len(averages) != len(currents):
                raise ValueError(f"model has {len(currents)} parameters and buffers, the average "
                                 f"{len(averages)}: not the network the average was made of")
            floating = [a.is_floating_point() for a in averages]
            groups = tuple([t for t, f in zip(tensors, floating) if f == keep]
                           for keep in (True, False) for tensors in (averages, currents))
            self._pairs = (model, groups)
        return self._pairs[1]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Folds ``model``'s current weights (the network copied at construction, its tensors
        updated in place) into the average."""
        self.updates += 1
        t = self.updates
        weight = 1.0 if t == 1 else 1.0 - min(self.decay, (1 + t) / (10 + t))
        averages, currents, other_averages, other_currents = self._tensors(model)
        # one pass over all floating-point tensors rather than a lerp_ per tensor
        if averages:
            torch._foreach_lerp_(averages, currents, weight)
        if other_averages:
            torch._foreach_copy_(other_averages, other_currents)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])


@torch.no_grad()
def reestimate_batchnorm(model: torch.nn.Module, images: Iterable[torch.Tensor]) -> int:
    """Replaces the running statistics of ``model``'s BatchNorm layers by their plain means over the
    batches of ``images`` (the model's inputs, e.g. (B, 3, H, W) uint8 patches on its device),
    forwarded in training mode, as ``torch.optim.swa_utils.update_bn`` does for averaged weights;
    the model is then back in the mode it was in. Returns the number of batches (ValueError for
    none, the statistics left as they were). A network whose BatchNorm stays frozen in training
    mode is left as it is (returns 0).
    """
    if getattr(model, "frozen_batchnorm", False):
        return 0
    batches = iter(images)
    first = next(batches, None)
    if first is None:
        raise ValueError("images gave no batch: the BatchNorm statistics are left as they were")
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean over the batches
    was_training = model.training
    model.train()
    count = 0
    try:
        for batch in itertools.chain([first], batches):
            model(batch)
            count += 1
    finally:
        model.train(was_training)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return count


# ----------------------------------------------------------------------------------------------
# Checkpoints

def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(path, model: torch.nn.Module, config: TrainConfig, *, optimizer=None, scheduler=None,
                    scaler=None, step: int = 0, metrics: Optional[dict] = None,
                    localization: Optional[dict] = None, average: Optional[WeightAverage] = None,
                    average_statistics: Optional[dict] = None, finished: bool = False,
                    world_size: int = 1) -> Path:
    """Writes a checkpoint atomically (a temporary file in the same folder, fsync, os.replace).

    Holds the model (the training weights), optimiser, scheduler and gradient-scaler states, the
    step, the RNG states (torch, CUDA, numpy, python), the config as a dict, ``metrics``, where
    given the weight ``average`` (its state_dict: the weights :func:`load_checkpoint` predicts
    with, and a resumed run averages on from), ``average_statistics`` (the BatchNorm statistics
    re-estimated for the average at the run's end: what it predicts with, kept apart from the
    averaged ones the run would continue from), the calibrated ``localization`` settings
    ({"threshold", "min_distance", "f1_8px"} of :func:`mud_iknn.evaluate.calibrate_localization`),
    whether the run ``finished`` (its end's re-estimation, validation and calibration done) and the
    ``world_size`` it trained with; everything loads with ``torch.load(weights_only=True)``.
    Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": int(step),
             "config": config.to_dict(), "model": model.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "scaler": scaler.state_dict() if scaler is not None else None,
             "rng": _rng_state(), "metrics": json.loads(json.dumps(metrics or {})),
             "finished": bool(finished), "world_size": int(world_size)}
    if average_statistics is not None:
        state["average_statistics"] = average_statistics
    if localization is not None:
        state["localization"] = json.loads(json.dumps(localization))
    if average is not None:
        state["average"] = average.state_dict()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_checkpoint(path, map_location="cpu") -> dict:
    """The raw checkpoint dict; ValueError naming the file when it is not a mud_iknn checkpoint, is
    damaged, or holds a config that does not load (e.g. written by a newer version)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle and zip errors have no common base class
        # torch's own message suggests weights_only=False, which is the wrong advice for a file
        # that is not a checkpoint at all: name the failure, not the workaround.
        raise ValueError(f"{path} is not a mud_iknn checkpoint: torch.load(weights_only=True) could not read "
                         f"it ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a mud_iknn checkpoint (no '{CHECKPOINT_FORMAT}' format marker)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is a mud_iknn checkpoint of version {state.get('version')!r}; this "
                         f"version reads {CHECKPOINT_VERSION}")
    missing = [key for key in _CHECKPOINT_KEYS if key not in state]
    if missing or not isinstance(state["config"], dict):
        raise ValueError(f"{path} is a damaged mud_iknn checkpoint: "
                         + (f"no {', '.join(missing)}" if missing else "its config is not a dict"))
    try:
        TrainConfig.from_dict(state["config"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None
    localization = state.get("localization")  # optional: checkpoints before calibration lack it
    if localization is not None and not (
            isinstance(localization, dict) and isinstance(localization.get("threshold"), (int, float))
            and math.isfinite(localization["threshold"]) and isinstance(localization.get("min_distance"), int)
            and localization["min_distance"] >= 0):
        raise ValueError(f"{path} is a damaged mud_iknn checkpoint: its localization settings are "
                         f"{localization!r}")
    average = state.get("average")  # optional: runs without a weight average have none
    if average is not None and not (isinstance(average, dict) and isinstance(average.get("updates"), int)
                                    and isinstance(average.get("model"), dict)):
        raise ValueError(f"{path} is a damaged mud_iknn checkpoint: its weight average is not "
                         f"{{'updates': int, 'model': state dict}}")
    return state


_CHECKPOINT_KEYS = ("step", "config", "model", "optimizer", "scheduler", "scaler", "rng", "metrics")


def load_checkpoint(path, map_location="cpu") -> tuple[MUDIKNN, TrainConfig, dict]:
    """(model, config, extra) from a checkpoint written by :func:`save_checkpoint`.

    The model is rebuilt from the saved config (no weights download) in eval mode on
    ``map_location``, with the averaged weights where the run kept an average
    (``TrainConfig.average_decay``), else the last step's; ``extra`` holds "step", "metrics",
    "optimizer", "scheduler", "scaler", "rng" and "localization" (the calibrated settings, None for
    a checkpoint without them), which is also set as ``model.localization``
    (:func:`mud_iknn.evaluate.predict_image` then uses it).
    Raises FileNotFoundError for a missing file and ValueError naming the file for anything else.
    """
    state = read_checkpoint(path, map_location)
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config, load_weights=False)
    average = state.get("average")
    try:
        model.load_state_dict(state["model"] if average is None else
                              {**average["model"], **state.get("average_statistics", {})})
    except RuntimeError as err:  # "Error(s) in loading state_dict ...:", then one line per mismatch
        lines = [line.strip() for line in str(err).strip().splitlines()]
        raise ValueError(f"{path}: the weights do not fit the network of its config (backbone "
                         f"{config.backbone}, patch_size {config.patch_size}): {lines[-1][:300]}") from None
    model.to(map_location).eval()
    extra = {key: state[key] for key in _CHECKPOINT_KEYS if key not in ("config", "model")}
    extra["localization"] = model.localization = state.get("localization")
    return model, config, extra


# ----------------------------------------------------------------------------------------------
# Data

def _augmentation_seed(seed: int, rank: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, rank, position]).generate_state(1, np.uint64)[0] >> 1)


class _AugmentedSamples(Dataset):
    """Index by (sample index, augmentation seed) -> the augmented CrowdSample; with ``cache`` each
    sample of ``dataset`` is read once (per process) and kept."""

    def __init__(self, dataset, transform: TrainTransform, cache: bool = False):
        self.dataset = dataset
        self.transform = transform
        self.cache: Optional[dict] = {} if cache else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        if self.cache is None:
            sample = self.dataset[index]
        elif index in self.cache:
            sample = self.cache[index]
        else:
            sample = self.cache[index] = self.dataset[index]
        return self.transform(sample, torch.Generator().manual_seed(seed))


class _PatchStream(Sampler):
    """Endless batches of (index, augmentation seed) for one rank, starting at ``start_step``.

    The index stream is the concatenation of the rank's DistributedSampler epochs (seeded, shuffled,
    padded to equal shards), cut into batches of ``batch_size``: step s always gets the same batch.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int, world_size: int, start_step: int = 0):
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=False)
        self.batch_size, self.seed, self.rank, self.start_step = batch_size, seed, rank, start_step

    def __iter__(self):
        position = self.start_step * self.batch_size
        epoch, skip = divmod(position, len(self.sampler))
        batch = []
        while True:
            self.sampler.set_epoch(epoch)
            for index in list(self.sampler)[skip:]:
                batch.append((index, _augmentation_seed(self.seed, self.rank, position)))
                position += 1
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            epoch, skip = epoch + 1, 0


# ----------------------------------------------------------------------------------------------
# Training

@dataclass
class _Context:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup(config: TrainConfig) -> _Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} was asked for but CUDA is not available")
    owns_group = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
        owns_group = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if want_cuda:
        explicit = config.device.startswith("cuda:") and world == 1
        device = torch.device(config.device if explicit else f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return _Context(rank, world, device, owns_group)


def _truncate_log(path: Path, step: int) -> None:
    """Drops records after ``step`` (written by a run killed after its last checkpoint), and a
    last line cut short by the kill."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(line + "\n" for line in kept))


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


#: The settings a resumed run may change: how long it runs, how it logs, checkpoints and validates,
#: and where; everything else must equal the checkpoint's (the run would silently be another one).
RESUMABLE = ("steps", "checkpoint_every", "eval_every", "log_every", "eval_stride", "eval_limit", "num_workers",
             "device", "out_dir", "progress", "deterministic", "calibrate_images", "cache_samples",
             "average_bn_batches", "max_seconds")


def _check_resumable(config: TrainConfig, saved: dict, path: Path) -> None:
    """ValueError naming the checkpoint and each setting outside RESUMABLE that differs from its
    config ``saved`` (as read_checkpoint returns it: loadable)."""
    saved = TrainConfig.from_dict(saved).to_dict()
    now = config.to_dict()
    changed = [f"{name} {saved[name]!r} -> {now[name]!r}" for name in now
               if name not in RESUMABLE and now[name] != saved[name]]
    if changed:
        raise ValueError(f"{path} was written by a run with other settings ({'; '.join(changed)}): resume "
                         f"with the checkpoint's settings (only {', '.join(RESUMABLE)} may change) or start a "
                         f"new run in another out_dir")


def run_settings(settings: dict, resume: bool, preset: Optional[dict] = None) -> tuple[dict, Optional[int]]:
    """(settings of the run, step of the checkpoint it continues or None) for the out_dir that
    ``settings`` (a TrainConfig dict, possibly partial) name.

    With ``resume`` and a checkpoint there: the checkpoint's settings with ``settings`` applied over
    them (:func:`train` then refuses changes outside :data:`RESUMABLE`). Without ``resume`` a
    checkpoint there is never overwritten: ValueError naming it. No checkpoint: ``preset`` (the
    settings a preset makes, e.g. of ``TrainConfig.small()``) with ``settings`` over it; a resumed run
    has its checkpoint's settings in the preset's place (the preset made them when it started, its
    lr decay from the steps it had then).
    """
    new_run = _settings.merged(preset or {}, settings)
    out_dir = Path(new_run.get("out_dir", TrainConfig.out_dir))
    checkpoint = out_dir / CHECKPOINT_NAME
    if not checkpoint.is_file():
        return new_run, None
    if not resume:
        raise ValueError(f"{out_dir} already holds a run ({checkpoint}): pass --resume to continue it, or "
                         f"choose another --out-dir (or delete that one)")
    state = read_checkpoint(checkpoint)  # ValueError naming it when damaged or its config does not load
    saved = TrainConfig.from_dict(state["config"]).to_dict()  # older checkpoints' flat label settings too
    label = settings.get("label")
    if isinstance(label, dict) and label.get("kind", saved["label"]["kind"]) != saved["label"]["kind"]:
        saved["label"] = {}  # another kind: none of the saved kind's settings apply (train then refuses it)
    return _settings.merged(saved, settings), state["step"]


def train(config: TrainConfig, train_set, val_set=None, resume: bool = False,
          on_step: Optional[Callable[[int, dict], None]] = None) -> dict:
    """Trains MUD-ikNN on ``train_set`` (a torch Dataset of CrowdSample); see the module docstring.

    val_set: evaluated with sliding windows every ``eval_every`` steps and at the end (each
    process its share of the images; rank 0 logs the metrics).
    resume: continue from ``out_dir/checkpoint.pt`` when it exists (else start afresh); the config
    may differ from the checkpoint's only in :data:`RESUMABLE` settings (ValueError otherwise).
    A validation that fails (e.g. an unreadable image) first checkpoints the steps trained so far.
    on_step(step, record): called on every process after each step with that step's loss record
    (values as Python floats only on logging steps; otherwise the record holds only "step").

    Returns {"step" (the steps trained: ``config.steps`` unless ``max_seconds`` ended the run
    sooner), "train" (last logged record), "val" (last validation metrics or None),
    "checkpoint", "metrics_file", "plot" (paths as str on rank 0), "model" (the trained
    MUDIKNN, unwrapped, on the training device: the weight average's copy with ``average_decay``)}.
    """
    if len(train_set) == 0:
        raise ValueError("train_set is empty")
    started = _clock()
    ctx = _setup(config)
    try:
        return _train(config, ctx, train_set, val_set, resume, on_step, started)
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


_clock = time.perf_counter  # what max_seconds is measured by


def _elapsed(started: float, ctx) -> float:
    """Seconds since ``started``, the largest over the processes, which then agree on the budget."""
    elapsed = torch.tensor(_clock() - started, dtype=torch.float64, device=ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed)


class _StepDecay:
    """Adam's learning rate, lr x lr_gamma^floor(p / lr_step), p the run's progress in steps (never
    decreasing): the steps taken, as torch's StepLR, or with ``max_seconds`` the larger of that and
    steps x min(elapsed / max_seconds, 1), so that a run the budget ends early lowers its rate at
    the same fraction of the run."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig):
        self.optimizer, self.lr, self.lr_step, self.gamma = optimizer, config.lr, config.lr_step, config.lr_gamma
        self.progress = 0.0
        self.advance(0)

    def advance(self, progress: float) -> None:
        self.progress = max(self.progress, float(progress))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * self.gamma ** int(self.progress // self.lr_step)

    @property
    def current(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"progress": self.progress}

    def load_state_dict(self, state: dict) -> None:
        # checkpoints from before the time budget hold torch's StepLR state: last_epoch counts the steps
        self.progress = 0.0
        self.advance(state["progress"] if "progress" in state else state["last_epoch"])


def _train(config, ctx, train_set, val_set, resume, on_step, started) -> dict:
    out_dir = Path(config.out_dir)
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_writable(out_dir)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = ctx.device
    model = build_model(config, load_weights=not (resume and ckpt_path.exists())).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    scheduler = _StepDecay(optimizer, config)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    average = WeightAverage(model, config.average_decay) if config.average_decay is not None else None
    step = 0
    last_val = None
    if resume and ckpt_path.exists():
        state = read_checkpoint(ckpt_path, map_location="cpu")
        _check_resumable(config, state["config"], ckpt_path)
        saved_world = state.get("world_size", 1)
        if saved_world != ctx.world_size:  # the patch stream is sharded by it, and the batch is per process
            raise ValueError(f"{ckpt_path} was trained by {saved_world} process(es), this run has "
                             f"{ctx.world_size}: resume it with as many")
        if state["step"] > config.steps:
            raise ValueError(f"{ckpt_path} is at step {state['step']}, past steps = {config.steps}: resume "
                             f"with at least as many steps")
        if state["step"] == config.steps and state.get("finished"):
            return _finished_run(ckpt_path, state, ctx)
        model.load_state_dict(state["model"])
        if average is not None:
            average.load_state_dict(state["average"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step = state["step"]
        last_val = state["metrics"].get("val")
        if ctx.is_main:
            _truncate_log(log_path, step)
    elif ctx.is_main and log_path.exists():
        log_path.unlink()
    net = model
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = DataLoader(
        _AugmentedSamples(train_set, TrainTransform(config.patch_size, config.flip_p, config.scale_range),
                          config.cache_samples),
        batch_sampler=_PatchStream(train_set, config.batch_size, config.seed, ctx.rank, ctx.world_size, step),
        collate_fn=collate_crowd, num_workers=config.num_workers, pin_memory=device.type == "cuda",
        persistent_workers=False,
        # its workers' base seed from a generator of its own, not the global one, which a resumed run
        # has restored before it starts the loader: the RNG states saved afterwards are then the same
        generator=torch.Generator().manual_seed(config.seed))
    loss_fn = MUDLoss(config.map_weight)
    spec = config.label
    last_train: dict = {}
    progress = None
    if ctx.is_main and config.progress and step < config.steps:
        from tqdm.auto import tqdm
        progress = tqdm(total=config.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    def save(val, localization=None, statistics=None, finished=False) -> None:  # of the steps trained so far
        _checkpoint(ckpt_path, model, config, optimizer, scheduler, scaler, step, val, localization, average,
                    statistics, finished, ctx=ctx)

    predictor = model if average is None else average.model  # what validates, calibrates and is returned

    model.train()
    batches = iter(loader)
    tic, tic_step = time.perf_counter(), step
    try:
        while step < config.steps:
            batch = next(batches).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                maps, counts = net(batch.images)
            labels = None
            if model.map_channels:
                labels = spec.make(batch.points, tuple(maps.shape[-2:]), batch.offsets, stride=model.label_stride)
            loss, parts = loss_fn(maps, counts, labels, batch.counts)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if average is not None:
                average.update(model)
            step += 1
            done, out_of_time = step, False  # the run's progress in steps, for the lr schedule
            if config.max_seconds is not None and step % 10 == 0:
                elapsed = _elapsed(started, ctx)
                done = max(step, config.steps * min(elapsed / config.max_seconds, 1.0))
                out_of_time = elapsed > config.max_seconds and step < config.steps
            scheduler.advance(done)
            record = {"step": step}
            if config.log_every and (step % config.log_every == 0 or step == config.steps):
                values = torch.stack([loss.detach(), parts["count_loss"].detach(), parts["map_loss"].detach()])
                if ctx.world_size > 1:
                    dist.all_reduce(values)
                    values /= ctx.world_size
                now = time.perf_counter()
                record = {"split": "train", "step": step, "loss": values[0].item(),
                          "count_loss": values[1].item(), "map_loss": values[2].item(),
                          "lr": scheduler.current, "sec_per_step": (now - tic) / (step - tic_step)}
                tic, tic_step = now, step
                last_train = record
                if ctx.is_main:
                    _append(log_path, record)
                    if progress is not None:
                        progress.set_postfix(loss=f"{record['loss']:.4g}")
            if val_set is not None and config.eval_every and step % config.eval_every == 0 and step < config.steps:
                last_val = _validate(predictor, val_set, config, ctx, step, log_path, lambda: save(last_val))
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                save(last_val)
            if progress is not None:
                progress.update(1)
            if on_step is not None:
                on_step(step, record)
            if out_of_time:
                break
        statistics = None
        if average is not None and config.average_bn_batches:
            # on a copy: the average a longer run continues from keeps its own averaged statistics.
            # The next batches of the patch stream, the same whenever the run ends or resumes here.
            predictor = copy.deepcopy(average.model)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                batches_seen = reestimate_batchnorm(predictor, (next(batches).images.to(device, non_blocking=True)
                                                                for _ in range(config.average_bn_batches)))
            if ctx.world_size > 1 and batches_seen:
                _average_batchnorm_statistics(predictor, ctx.world_size)
            statistics = _batchnorm_statistics(predictor)
        elif ctx.world_size > 1:
            _broadcast_buffers(predictor)  # the last forward updated each replica's statistics on its own batch
        if val_set is not None:
            last_val = _validate(predictor, val_set, config, ctx, step, log_path, lambda: save(last_val))
        if model.map_channels and config.calibrate_images:
            localization = None
            if ctx.is_main:
                localization = calibrate_localization(predictor, train_set, window=config.patch_size,
                                                      stride=config.window_stride, limit=config.calibrate_images)
            if ctx.world_size > 1:
                box = [localization]
                dist.broadcast_object_list(box, src=0)
                localization = box[0]
            predictor.localization = localization
        save(last_val, getattr(predictor, "localization", None), statistics, finished=True)
    finally:
        if progress is not None:
            progress.close()
    result = {"step": step, "train": last_train, "val": last_val, "model": predictor,
              "checkpoint": None, "metrics_file": None, "plot": None}
    if ctx.is_main:
        result["checkpoint"] = str(ckpt_path)
        if log_path.exists():  # none with log_every = 0 and no validation
            from .plots import plot_metrics
            result.update(metrics_file=str(log_path), plot=str(plot_metrics(log_path, out_dir / PLOT_NAME)))
    return result


def _finished_run(ckpt_path: Path, state: dict, ctx) -> dict:
    """train()'s result for a run resumed at the step it finished (its end's work done): nothing is
    trained, validated or written again."""
    predictor = load_checkpoint(ckpt_path, map_location=ctx.device)[0]
    log_path = ckpt_path.parent / METRICS_NAME
    plot = ckpt_path.parent / PLOT_NAME
    return {"step": state["step"], "train": {}, "val": state["metrics"].get("val"), "model": predictor,
            "checkpoint": str(ckpt_path) if ctx.is_main else None,
            "metrics_file": str(log_path) if ctx.is_main and log_path.exists() else None,
            "plot": str(plot) if ctx.is_main and plot.exists() else None}


def _batchnorm_statistics(model: torch.nn.Module) -> dict:
    """The running statistics of ``model``'s BatchNorm layers, by state_dict key."""
    return {f"{name}.{key}": buffer.detach().clone() for name, module in model.named_modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            for key, buffer in module.named_buffers(recurse=False) if buffer is not None}


def _check_writable(out_dir: Path) -> None:
    """OSError naming ``out_dir`` when a file cannot be written there (before any step, not at the
    first checkpoint); also clears the temporary files of checkpoint writes that were killed."""
    for stale in out_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):
        stale.unlink(missing_ok=True)
    probe = out_dir / f".write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OSError(f"out_dir {out_dir} is not writable: {err}") from None


def _broadcast_buffers(model: torch.nn.Module) -> None:
    """Copies rank 0's buffers (BatchNorm's running statistics) into every process's ``model``, as
    DistributedDataParallel does before each forward."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _average_batchnorm_statistics(model: torch.nn.Module, world_size: int) -> None:
    """Replaces the running means and variances of ``model``'s BatchNorm layers, re-estimated by
    :func:`reestimate_batchnorm` on as many batches on every process, by their means over the
    processes: the plain means over all the processes' batches."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                dist.all_reduce(buffer)
                buffer /= world_size


def _validate(model, val_set, config, ctx, step, log_path, save_on_failure) -> dict:
    """Every process counts its share of the images (every world_size-th of the first
    ``config.eval_limit``), rank 0 gathers the counts and logs the metrics; every process returns
    them. If evaluating raises on any process, ``save_on_failure()`` (called on every process)
    checkpoints the steps trained so far before the error propagates: the process's own, on the
    others a RuntimeError naming the process that failed."""
    if ctx.world_size > 1:
        _broadcast_buffers(model)  # rank 0's BatchNorm statistics: the replicas then count alike
    n = len(val_set) if config.eval_limit is None else min(config.eval_limit, len(val_set))
    share = range(ctx.rank, n, ctx.world_size)
    records, failure = [], None
    try:
        if len(share):
            records = evaluate(model, Subset(val_set, share), window=config.patch_size,
                               stride=config.window_stride)["per_image"]
    except Exception as err:
        failure = err
    mine = records if failure is None else f"{type(failure).__name__}: {failure}"
    shares = [mine]
    if ctx.world_size > 1:
        shares = [None] * ctx.world_size
        dist.all_gather_object(shares, mine)
    failed = [(rank, message) for rank, message in enumerate(shares) if isinstance(message, str)]
    try:
        if failure is not None:
            raise failure
        if failed:
            rank, message = failed[0]
            raise RuntimeError(f"validation failed on rank {rank}: {message}")
        per_image = [None] * n
        for rank, records in enumerate(shares):
            per_image[rank::ctx.world_size] = records
        result = count_metrics([r["predicted"] for r in per_image], [r["count"] for r in per_image])
    except Exception:  # on every process alike (the gathered shares are the same)
        save_on_failure()
        raise
    metrics = {"split": "val", "step": step, "mae": result["mae"], "rmse": result["rmse"], "nae": result["nae"]}
    if ctx.is_main:
        _append(log_path, metrics)
    return metrics


def _checkpoint(path, model, config, optimizer, scheduler, scaler, step, last_val, localization=None,
                average=None, average_statistics=None, finished=False, *, ctx) -> None:
    if ctx.is_main:
        save_checkpoint(path, model, config, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        step=step, metrics={"val": last_val}, localization=localization, average=average,
                        average_statistics=average_statistics, finished=finished, world_size=ctx.world_size)
    if ctx.world_size > 1:
        dist.barrier()

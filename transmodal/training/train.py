"""Train the TransMODAL head on cached features (paper 4.2: AdamW, cosine annealing, batch 4)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from transmodal import distributed
from transmodal.determinism import deterministic_attention, leaves_torch_settings_as_found, seed_everything
from transmodal.features.cache import FeatureStore
from transmodal.io import Resumable, atomic_dir, file_signature, folder_signature, source_digest
from transmodal.model import TransModal, parameter_counts
from transmodal.params import CheckpointError, ModelConfig, SelectorConfig, TrainConfig
from transmodal.training.data import SplitData, load_split
from transmodal.vision.checkpoints import accelerator, first_line, pick_device

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# The params upstream of the feature cache that `transmodal predict` needs to run the same chain on a new
# video, recorded in the model folder's config.json under "pipeline" (dvc.yaml lists them under train).
PIPELINE_KEYS: dict[str, tuple[str, ...]] = {
    "frames": ("stride", "reference_fps", "max_side"),
    "clips": ("length", "crop_margin"),
    "detect": (
        "source",
        "checkpoint",
        "revision",
        "score_threshold",
        "low_score_threshold",
        "person_label",
        "track_activation_threshold",
        "lost_track_buffer",
        "minimum_matching_threshold",
        "minimum_consecutive_frames",
        "stitch_tracks",
        "stitch_max_scale",
        "precision",
    ),
    "pose": ("source", "checkpoint", "revision", "dataset_index", "precision"),
}


def pipeline_record(params: dict) -> dict[str, dict]:
    """The :data:`PIPELINE_KEYS` of ``params``, each section validated first (a bad value names its key)."""
    from transmodal.params import section

    record = {}
    for name, keys in PIPELINE_KEYS.items():
        values = dataclasses.asdict(section(params, name))
        record[name] = {key: values[key] for key in keys}
    return record


def model_size(store: FeatureStore) -> dict[str, int]:
    """The head's size arguments (dim, classes, frames, tubelet, patches) from the feature cache's grid."""
    backbone = store.backbone
    return {
        "dim": backbone["hidden_size"],
        "num_classes": len(store.class_names),
        "num_frames": backbone["num_frames"],
        "tubelet_size": backbone["tubelet_size"],
        "patches_per_group": backbone["grid"][1],
    }


def build_model(store: FeatureStore, model_cfg: ModelConfig, selector_cfg: SelectorConfig) -> TransModal:
    """A fresh head sized from the feature cache's grid (which the selector's ranges are checked against)."""
    return TransModal(model_cfg, selector_cfg, **model_size(store))


def complexity_report(store: FeatureStore, model_cfg: ModelConfig, selector_cfg: SelectorConfig) -> dict:
    """Parameters and FLOPs per clip, per module, of this head at the cache's size beside the backbone that
    made the cache, and the same at the paper's size (docs/decisions.md, "Parameter counts and FLOPs")."""
    from transmodal.model.complexity import head_complexity, paper_size_complexity

    backbone = store.backbone
    return {
        "flops_counted_by": "torch.utils.flop_counter.FlopCounterMode, one clip, 2 FLOPs per multiply-add",
        "run_size": {
            **head_complexity(model_cfg, selector_cfg, **model_size(store)),
            "backbone": {
                "checkpoint": backbone.get("checkpoint"),
                "parameters": backbone["parameters"],
                "flops": backbone["flops_per_clip"],
            },
        },
        "paper_size": paper_size_complexity(model_cfg, selector_cfg),
    }


@torch.inference_mode()
def predict(model: TransModal, data: SplitData, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits (N, num_classes) float32 for every clip of ``data``, in order."""
    model.eval()
    outputs = []
    for start in range(0, len(data), batch_size):
        positions = np.arange(start, min(start + batch_size, len(data)))
        tokens, pose, _ = data.batch(positions)
        outputs.append(model(to_device(tokens, device), to_device(pose, device)).logits.float())
    return torch.cat(outputs).cpu() if outputs else torch.zeros(0, model.num_classes)  # one wait, at the end


def epoch_order(clips: int, epoch: int, generator: torch.Generator, sampler=None) -> tuple[np.ndarray, int]:
    """This process's clip positions for one epoch and how many of the first ones are its own: all of them
    in one process (a permutation drawn from ``generator``); under DDP the ``DistributedSampler``'s share,
    whose last position may repeat a clip of another rank's share (the sampler pads every rank to one count:
    the step trains on it, the epoch's loss and accuracy leave it out)."""
    if sampler is None:
        return torch.randperm(clips, generator=generator).numpy(), clips
    sampler.set_epoch(epoch)
    order = np.fromiter(sampler, dtype=np.int64)
    # the sampler's list: the clips, then (drop_last False) repeats up to total_size; rank r takes r, r + W, ...
    return order, len(range(sampler.rank, min(clips, sampler.total_size), sampler.num_replicas))


@torch.no_grad()
def add_to_sums(
    loss_sum: torch.Tensor,
    correct: torch.Tensor,
    loss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    counted: int,
    label_smoothing: float,
) -> None:
    """Add a step's first ``counted`` clips to the epoch's sums (in place, on the device): the summed loss
    (float64, as ``loss.item() * n`` summed in Python, bit for bit) and the right answers. All of them: the
    batch's mean ``loss`` times their count; fewer (the last of a rank's share under DDP): their own."""
    if counted == len(labels):
        loss_sum += loss.detach().double() * counted
        correct += (logits.argmax(-1) == labels).sum()
    elif counted > 0:
        kept, targets = logits[:counted].detach(), labels[:counted]
        loss_sum += F.cross_entropy(kept, targets, label_smoothing=label_smoothing, reduction="sum").double()
        correct += (kept.argmax(-1) == targets).sum()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU through pinned memory without waiting, so the host reads the next
    batch while the device trains on this one (a copy from pageable memory waits for the device)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def sync_token_norm(model: TransModal, device: torch.device) -> TransModal:
    """On CUDA under DistributedDataParallel, ``model.token_norm: batch`` standardises with the statistics
    of the global batch (``SyncBatchNorm``), so every process normalises alike and keeps the same running
    statistics, and the head trained is the one process's at ``train.batch_size`` x world size. torch syncs
    batch norm on GPUs only: on the CPU (gloo) each process uses its own batch (docs/decisions.md 41). The
    weights' names are unchanged, so the checkpoint loads into the plain head."""
    if device.type != "cuda" or model.token_norm is None:
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


@leaves_torch_settings_as_found
def train_model(
    store: FeatureStore,
    model_cfg: ModelConfig,
    selector_cfg: SelectorConfig,
    train_cfg: TrainConfig,
    out_dir: Path,
    progress: bool = True,
    pipeline: dict | None = None,
    resume_dir: Path | None = None,
    name: str = "train",
) -> tuple[dict, pd.DataFrame]:
    """Train, select the epoch with the best validation accuracy, save it to ``out_dir``.

    Returns (metrics, per-epoch history). The checkpoint is ``model.safetensors`` + ``config.json``
    (everything needed to rebuild the model without params.yaml; ``pipeline``, from :func:`pipeline_record`,
    adds the upstream params a new video is processed with).

    With ``resume_dir`` (the train stage's: ``data/.partial/train``) the training state is written there
    after every epoch but the last (:class:`TrainingState`), and a run with the same params, features, code
    and device starts after the last epoch written: the weights, the optimizer's and the schedule's state,
    every random generator (each process's, under DDP), the history and the best epoch so far. It ends with
    the bytes of a run never interrupted, and says so in a line that starts with ``name`` (printed by the
    main process even with ``progress`` off: an ablation seed's worker shows no bar but says it resumed).
    """
    seed_everything(train_cfg.seed)
    torch.set_num_threads(train_cfg.threads)
    world = distributed.current()
    device = pick_device(train_cfg.device)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    store.encode_on(device.type)  # backbone.store: recompute: the backbone runs where the head trains
    model = build_model(store, model_cfg, selector_cfg).to(device)
    train = load_split(store, "train", model_cfg.pose_scores)
    val = load_split(store, "val", model_cfg.pose_scores)
    if len(train) == 0:
        raise ValueError("no training clips in the feature cache (check data.split and the features stage)")
    net, sampler = model, None
    if world.size > 1:  # compute.nproc x compute.nnodes processes: the global batch is batch_size x world
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DistributedSampler

        model = sync_token_norm(model, device)
        net = DistributedDataParallel(
            model,
            device_ids=[world.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
        sampler = DistributedSampler(
            range(len(train)), world.size, world.rank, shuffle=True, seed=train_cfg.seed
        )
        # the weights are rank 0's (DDP copied them); from here on each rank draws its own dropout masks,
        # as one process draws one per clip (with one seed every rank dropped the same units)
        torch.manual_seed(int(np.random.SeedSequence([train_cfg.seed, world.rank]).generate_state(1)[0]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train_cfg.epochs)
    generator = torch.Generator().manual_seed(train_cfg.seed)

    history, best_state, best_key, best_epoch = [], None, None, None
    shown = progress and world.is_main
    state = None
    if resume_dir is not None:
        key = _resume_key(store, model_cfg, selector_cfg, train_cfg, device, world)
        if world.size > 1:  # every process names the state by rank 0's key (another GPU gives another)
            key = distributed.from_rank_0(key)
        state = TrainingState(resume_dir, key, model, optimizer, scheduler, generator, device, world)
        if state.resumed:
            history, best_key, best_epoch, best_state = state.restore()
            if world.is_main:
                print(
                    f"{name}: resuming after epoch {len(history)} of {train_cfg.epochs} from {state.directory}",
                    flush=True,  # a seed's worker process: its stdout may be a pipe, held until it exits
                )
    epochs = tqdm(
        range(len(history) + 1, train_cfg.epochs + 1),
        desc="train", unit="epoch", disable=not shown, initial=len(history), total=train_cfg.epochs,
    )  # fmt: skip
    for epoch in epochs:
        net.train()
        order, seen = epoch_order(len(train), epoch, generator, sampler)
        # the epoch's sums stay on the device: one wait for it an epoch, not two a step (a step's .item()
        # made the host wait for the device before it read the next batch); float64 as the Python sums were
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for start in range(0, len(order), train_cfg.batch_size):
            positions = order[start : start + train_cfg.batch_size]
            tokens, pose, labels = (to_device(t, device) for t in train.batch(positions))
            with deterministic_attention(device):
                logits = net(tokens, pose).logits  # (B, classes)
                loss = F.cross_entropy(logits, labels, label_smoothing=train_cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            # DistributedSampler's padding repeats clips: they train, the epoch's sums leave them out
            counted = min(len(positions), seen - start)
            add_to_sums(loss_sum, correct, loss, logits, labels, counted, train_cfg.label_smoothing)
        loss_sum, correct = float(loss_sum), int(correct)
        if sampler is not None:  # every rank's sums: the epoch's loss and accuracy over all of them
            loss_sum, correct, seen = distributed.sum_over_ranks([loss_sum, correct, seen], device)
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],  # the rate this epoch trained at, before the step below
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
        }
        scheduler.step()
        if len(val):
            val_logits = predict(model, val, max(train_cfg.batch_size, 16), device)
            row["val_loss"] = float(F.cross_entropy(val_logits, val.labels))
            row["val_acc"] = float((val_logits.argmax(-1) == val.labels).float().mean())
            # best accuracy first, then lower loss; strict ">" keeps the earliest epoch on a full tie
            key = (row["val_acc"], -row["val_loss"])
        else:
            key = (epoch, 0.0)  # no validation clips: the last epoch is kept (recorded in metrics)
        history.append(row)
        if best_key is None or key > best_key:
            best_key, best_state = key, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_epoch = epoch
        if state is not None and epoch < train_cfg.epochs:  # the last epoch goes on to the checkpoint
            state.save(history, best_key, best_epoch, best_state)
        epochs.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row.get('val_acc', math.nan):.3f}")

    config = {
        "model": model.config_dict(),
        "classes": store.class_names,
        "train": asdict(train_cfg),
        "best_epoch": best_epoch,
        "backbone": store.backbone,
    }
    if pipeline is not None:
        config["pipeline"] = pipeline
    if world.size > 1:
        distributed.barrier()  # every rank finished: a failure in any of them leaves no checkpoint
    if world.is_main:
        save_checkpoint(best_state, config, out_dir)
    best = history[best_epoch - 1]
    metrics = {
        "best_epoch": best_epoch,
        "model_selection": "best validation clip accuracy, then lower validation loss"
        if len(val)
        else "last epoch (no validation clips)",
        "val_acc": best.get("val_acc"),
        "val_loss": best.get("val_loss"),
        "train_loss_final": history[-1]["train_loss"],
        "train_clips": len(train),
        "val_clips": len(val),
        "parameters": parameter_counts(model),
        "device": str(device),
        "processes": world.size,
        "global_batch_size": train_cfg.batch_size * world.size,
    }
    return metrics, pd.DataFrame(history)


def _resume_key(
    store: FeatureStore,
    model_cfg: ModelConfig,
    selector_cfg: SelectorConfig,
    train_cfg: TrainConfig,
    device: torch.device,
    world,
) -> dict:
    """What an epoch's training state depends on: the params, the code of the head and its training, the
    feature cache's files, the device (on CUDA the GPU and its libraries, on the CPU the processor's model and
    vector unit), torch's version and the number of processes (each has its own random generator)."""
    here = Path(__file__).parent
    code = [here / "train.py", here / "data.py", here.parent / "features" / "cache.py"]
    code.append(here.parent / "distributed.py")  # sums each epoch's loss and accuracy over the processes
    return {
        "code": source_digest(*code, *sorted((here.parent / "model").glob("*.py"))),
        "params": [asdict(model_cfg), asdict(selector_cfg), asdict(train_cfg)],
        "runs_on": [str(device), *accelerator(device)],
        "versions": [torch.__version__],
        "processes": world.size,
        "features": [folder_signature(store.directory), file_signature(store.clips_path)],
    }


class TrainingState:
    """The training state after an epoch, kept outside the stage's output (:class:`~transmodal.io.Resumable`)
    so that an interrupted run goes on from there. One file, written atomically by rank 0 with every
    process's random generators (gathered), so the processes of a resumed DDP run start from one epoch.
    Loaded with ``weights_only`` (no pickle code runs)."""

    FILE = "state.pt"

    def __init__(self, resume_dir, key, model, optimizer, scheduler, generator, device, world):
        self._parts = Resumable(resume_dir, key, clean=world.is_main, base=resume_dir)
        if world.size > 1:
            distributed.barrier()  # rank 0 has cleaned the folder before anyone reads or writes
        self.directory = self._parts.directory
        self.resumed = self._parts.has(self.FILE)
        if world.size > 1:  # rank 0 decides: a process that saw no file would run other epochs, other calls
            self.resumed = distributed.from_rank_0(self.resumed)
        self._model, self._optimizer, self._scheduler, self._generator = (
            model,
            optimizer,
            scheduler,
            generator,
        )
        self._device, self._world = device, world

    def _random_state(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if self._device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self._device)
        return state

    def save(self, history: list[dict], best_key, best_epoch: int, best_state: dict) -> None:
        randoms = [self._random_state()]
        if self._world.size > 1:
            randoms = [None] * self._world.size
            import torch.distributed as dist

            dist.all_gather_object(randoms, self._random_state())
        if not self._world.is_main:
            return
        state = {
            "model": self._model.state_dict(),
            "optimizer": self._optimizer.state_dict(),
            "scheduler": self._scheduler.state_dict(),
            "generator": self._generator.get_state(),
            "random": randoms,
            "history": history,
            # the best epoch's weights, unless they are this epoch's (a quarter of the file at most epochs)
            "best": {
                "key": list(best_key),
                "epoch": best_epoch,
                "state": None if best_epoch == len(history) else best_state,
            },
        }
        with self._parts.writing(self.FILE) as tmp:
            torch.save(state, tmp)

    def restore(self) -> tuple[list[dict], tuple, int, dict]:
        """Load the state into the model, optimizer, schedule and generators; (history, best key, best epoch,
        best weights)."""
        path = self._parts.path(self.FILE)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged file (a disk that filled, a copy cut short): said, then removed
            raise CheckpointError(
                f"{path}: the training state of the interrupted run cannot be read ({first_line(err)}); "
                "remove it to train from epoch 1"
            ) from None
        self._model.load_state_dict(state["model"])
        self._optimizer.load_state_dict(state["optimizer"])
        self._scheduler.load_state_dict(state["scheduler"])
        self._generator.set_state(state["generator"])
        mine = state["random"][self._world.rank]
        torch.set_rng_state(mine["cpu"])
        if "cuda" in mine:
            torch.cuda.set_rng_state(mine["cuda"], self._device)
        best = state["best"]
        weights = best["state"]
        if weights is None:  # the last epoch saved was the best
            weights = {k: v.detach().cpu().clone() for k, v in self._model.state_dict().items()}
        return state["history"], tuple(best["key"]), best["epoch"], weights


def save_checkpoint(state: dict[str, torch.Tensor], config: dict, out_dir: Path) -> None:
    """Weights as safetensors plus the config JSON, written atomically as one folder."""
    with atomic_dir(out_dir) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")


def load_checkpoint(model_dir: Path, device: torch.device | str = "cpu") -> tuple[TransModal, dict]:
    """Rebuild the model from its own config.json and load the weights (strict). A config.json that is not
    the train stage's, weights that are damaged (cut short) or not the config's model: one line
    (:class:`CheckpointError`) naming the folder."""
    from safetensors import SafetensorError

    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / CONFIG_FILE).read_text())
        model = TransModal.from_config_dict(config["model"])
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise CheckpointError(
            f"{model_dir}: cannot load the model ({first_line(err)}); {CONFIG_FILE} is not one the train or "
            "ablate stages wrote (re-run the stage that wrote it)"
        ) from None
    try:
        model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)), strict=True)
    except (SafetensorError, RuntimeError) as err:  # a strict load of other weights: a RuntimeError
        raise CheckpointError(
            f"{model_dir}: cannot load the model ({first_line(err)}); {WEIGHTS_FILE} is damaged or not the "
            f"model {CONFIG_FILE} describes (re-run the stage that wrote it)"
        ) from None
    return model.to(device).eval(), config


@contextlib.contextmanager
def trained_threads(threads: int | None):
    """Run the head on the CPU thread count it trained with (``train.threads``, in its ``config.json``; torch's
    CPU kernels split some sums by thread, so the logits' last digits depend on it), then restore the
    process's count (``predict`` runs the backbone on all of them). None (a model folder from before the
    param): unchanged."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Ultralytics → training-callback platform, shaped like Ultralytics' own callback modules
(`ultralytics/utils/callbacks/*.py`): one function per event, gathered in `callbacks`, and
`attach(model, client)` to add them to a `YOLO` model.

    from trainer_sdk import Client
    from trainer_sdk.integrations.ultralytics import attach

    model = YOLO("yolov8n.yaml")
    with Client.from_env() as client:
        attach(model, client)
        model.train(data="data.yaml", epochs=10, nbs=16, batch=16)

What reaches the platform:
- every fit epoch (`on_fit_epoch_end`): the train losses
  (`label_loss_items(tloss, prefix="train")`), everything in `trainer.metrics` (precision,
  recall, mAPs, val losses) and the learning rates (`lr/pg0`…), as one progress callback;
- `best.pt` each time it improves (`on_model_save`), at most once per `min_interval`
  seconds, uploaded on a background thread from a copy; the final `best.pt` and `last.pt`
  at the end;
- at the end (`on_train_end`): the plots found in `save_dir` (*.png), then one validation
  result (class names, the final confusion matrix, per-class AP, task type from
  `trainer.args.task`, plot URIs), then the completion with the best metrics (`cancelled`
  when the platform asked to stop).

When the platform says an operator cancelled the job, `trainer.stop` is set: Ultralytics
finishes the epoch, validates the best weights and ends normally. Only rank 0 (or a
single-process run) reports. Nothing here raises into training: failures are logged.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("trainer_sdk")

try:
    from ultralytics.utils import RANK
except ImportError:  # the module is importable without Ultralytics (tests, docs)
    RANK = int(os.getenv("RANK", "-1"))

CTX = "_trainer_sdk"  # the per-run context dict lives on the trainer under this name
TASK_TYPES = {"detect": "detection", "segment": "segmentation", "classify": "classification",
              "pose": "pose", "obb": "obb"}
PRIMARY_METRIC = {"detect": "metrics/mAP50-95(B)", "segment": "metrics/mAP50-95(M)",
                  "pose": "metrics/mAP50-95(P)", "obb": "metrics/mAP50-95(B)",
                  "classify": "metrics/accuracy_top1"}
DEFAULT_MIN_INTERVAL = 60.0


def _reporting() -> bool:
    return RANK in {-1, 0}


def _ctx(trainer) -> dict | None:
    return getattr(trainer, CTX, None)


def _guarded(fn):
    """Never let a reporting problem reach the training loop."""
    @functools.wraps(fn)
    def wrapper(trainer, client, **options):
        if not _reporting():
            return
        try:
            fn(trainer, client, **options)
        except Exception as exc:  # noqa: BLE001 - reporting must not stop training
            log.warning("trainer_sdk %s failed: %s", fn.__name__, exc, exc_info=True)
    return wrapper


# -- callbacks ------------------------------------------------------------------------------

@_guarded
def on_pretrain_routine_start(trainer, client, min_interval: float = DEFAULT_MIN_INTERVAL,
                              **options) -> None:
    """Set up the per-run context."""
    setattr(trainer, CTX, {
        "client": client, "epoch": 0, "in_epoch": False, "final_metrics": None,
        "best_epoch": None, "best_uploader": _BestUploader(client, min_interval),
    })


@_guarded
def on_train_epoch_end(trainer, client, **options) -> None:
    """Mark a training epoch, so the next on_fit_epoch_end is a real epoch (the final
    evaluation of best.pt fires on_fit_epoch_end without one)."""
    ctx = _ctx(trainer)
    if ctx is not None:
        ctx["in_epoch"] = True
    _check_stop(trainer, client)


@_guarded
def on_model_save(trainer, client, **options) -> None:
    """best.pt was just rewritten if this epoch's fitness is the best so far."""
    ctx = _ctx(trainer)
    if ctx is None or trainer.fitness is None or trainer.best_fitness != trainer.fitness:
        return
    ctx["best_epoch"] = trainer.epoch + 1
    ctx["best_uploader"].offer(Path(trainer.best), trainer.epoch + 1)


@_guarded
def on_fit_epoch_end(trainer, client, **options) -> None:
    """One progress callback per epoch with every metric Ultralytics has."""
    ctx = _ctx(trainer)
    if ctx is None:
        return
    if not ctx["in_epoch"]:  # final_eval: the best weights' metrics, for the completion
        ctx["final_metrics"] = dict(trainer.metrics or {})
        return
    ctx["in_epoch"] = False
    epoch = trainer.epoch + 1
    ctx["epoch"] = epoch
    metrics = epoch_metrics(trainer)
    ctx["last_metrics"] = metrics
    client.report_progress(epoch, metrics, total_epochs=trainer.epochs)
    _check_stop(trainer, client)


@_guarded
def on_train_end(trainer, client, **options) -> None:
    """Checkpoints, plots, one validation result, then the completion."""
    ctx = _ctx(trainer)
    if ctx is None:
        return
    final = {k: v for k, v in (ctx["final_metrics"] or trainer.metrics or {}).items()}
    best_uri = last_uri = None
    try:
        ctx["best_uploader"].wait()
        best, last = Path(trainer.best), Path(trainer.last)
        if best.is_file():
            best_uri = client.upload_checkpoint(best, "best", epoch=ctx["best_epoch"],
                                                metrics=_numbers(final))
        if last.is_file():
            last_uri = client.upload_checkpoint(last, "last", epoch=ctx["epoch"] or None)
        plots = upload_plots(client, Path(trainer.save_dir))
        result = validation_result(trainer, ctx["epoch"], final, plots,
                                   ctx.get("last_metrics") or {})
        client.send_validation(result)
    except Exception as exc:  # noqa: BLE001
        log.warning("trainer_sdk: reporting the end of training failed: %s", exc,
                    exc_info=True)
    finally:
        client.complete(_numbers(final), best_checkpoint_path=best_uri,
                        last_checkpoint_path=last_uri)


callbacks = {
    "on_pretrain_routine_start": on_pretrain_routine_start,
    "on_train_epoch_end": on_train_epoch_end,
    "on_model_save": on_model_save,
    "on_fit_epoch_end": on_fit_epoch_end,
    "on_train_end": on_train_end,
}


def attach(model, client, *, min_interval: float = DEFAULT_MIN_INTERVAL) -> None:
    """Add the callbacks to a `YOLO` model (`model.add_callback`), bound to `client`.
    `min_interval`: least seconds between two best.pt uploads during training (the final
    best.pt is always uploaded)."""
    for event, fn in callbacks.items():
        model.add_callback(event, functools.partial(fn, client=client,
                                                    min_interval=min_interval))


# -- what is sent ---------------------------------------------------------------------------

def epoch_metrics(trainer) -> dict[str, float | None]:
    """Train losses, validation metrics and learning rates of the epoch just finished."""
    metrics: dict[str, Any] = {}
    if getattr(trainer, "tloss", None) is not None:
        try:
            metrics.update(trainer.label_loss_items(trainer.tloss, prefix="train"))
        except Exception as exc:  # noqa: BLE001 - a trainer variant with other loss shapes
            log.debug("train losses unavailable: %s", exc)
    metrics.update(trainer.metrics or {})
    metrics.update(getattr(trainer, "lr", None) or {})
    return _numbers(metrics)


def upload_plots(client, save_dir: Path) -> dict[str, str]:
    """Upload every PNG plot in the run directory; {stem: object URI} of those that made
    it. File names differ by version and task (`BoxF1_curve.png` in 8.4, `F1_curve.png`
    before; classification has no curves), so they are discovered, not listed."""
    uris: dict[str, str] = {}
    for path in sorted(save_dir.glob("*.png")):
        kind = "training_plot" if path.stem == "results" else "validation_plot"
        uri = client.upload_artifact(path, kind, "image/png")
        if not uri:
            log.warning("plot uploads stopped after %s failed", path.name)
            break
        uris[path.stem[:100]] = uri
    return uris


def validation_result(trainer, epoch: int, final: dict, plots: dict[str, str],
                      last_epoch_metrics: dict | None = None) -> dict:
    """Seed 003's ValidationCallbackRequest for the final validation of best.pt. The final
    validation has no losses: `overall_loss` is the last epoch's summed val losses."""
    task = getattr(trainer.args, "task", None) or "detect"
    names = trainer.data.get("names") if isinstance(trainer.data, dict) else None
    class_names = ([str(names[i]) for i in sorted(names)] if isinstance(names, dict)
                   else [str(n) for n in names or []])
    metrics = _numbers(final)
    primary = PRIMARY_METRIC.get(task)
    if primary not in metrics:
        primary = next((k for k in metrics if "mAP50-95" in k), None)
    losses = [v for k, v in metrics.items() if k.startswith("val/") and v is not None] or [
        v for k, v in (last_epoch_metrics or {}).items()
        if k.startswith("val/") and v is not None]
    validator = getattr(trainer, "validator", None)
    per_class = per_class_ap(validator, class_names)
    result = {
        "epoch": max(0, int(epoch)),
        "task_type": TASK_TYPES.get(task, "detection"),
        "primary_metric_name": primary,
        "primary_metric_value": metrics.get(primary) if primary else None,
        "overall_loss": sum(losses) if losses else None,
        "metrics": {**metrics, **({"per_class": per_class} if per_class else {})},
        "class_names": class_names,
        "visualization_urls": plots,
        "confusion_matrix": confusion_matrix(validator, len(class_names)),
    }
    return result


def confusion_matrix(validator, nc: int) -> list[list[int]] | None:
    """The validator's matrix as integer counts: (nc+1)² for detection (rows predicted,
    columns true, last = background), nc² for classification."""
    matrix = getattr(getattr(validator, "confusion_matrix", None), "matrix", None)
    if matrix is None:
        return None
    rows = matrix.tolist() if hasattr(matrix, "tolist") else list(matrix)
    if not rows or len(rows) not in (nc, nc + 1) or any(len(r) != len(rows) for r in rows):
        return None
    return [[int(round(float(v))) for v in row] for row in rows]


def per_class_ap(validator, class_names: list[str]) -> dict[str, dict[str, float]]:
    """{class name: {"ap50": …, "ap50_95": …}} from the validator's box metrics."""
    metrics = getattr(validator, "metrics", None)
    box = getattr(metrics, "box", None)
    index = getattr(metrics, "ap_class_index", None)
    if box is None or index is None:
        return {}
    try:
        ap, ap50 = list(box.ap), list(box.ap50)
        out = {}
        for i, cls in enumerate(list(index)):
            name = class_names[int(cls)] if int(cls) < len(class_names) else str(int(cls))
            out[name] = {"ap50": float(ap50[i]), "ap50_95": float(ap[i])}
        return out
    except (TypeError, ValueError, IndexError, AttributeError):
        return {}


def _numbers(metrics: dict) -> dict[str, float | None]:
    """Keep what is a number (numpy and tensors included); drop anything else."""
    out: dict[str, float | None] = {}
    for key, value in (metrics or {}).items():
        if value is None:
            out[str(key)] = None
            continue
        try:
            out[str(key)] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            continue
    return out


def _check_stop(trainer, client) -> None:
    if client.stop_requested and not getattr(trainer, "stop", False):
        log.warning("the platform asked to stop: finishing this epoch, then ending")
        trainer.stop = True


class _BestUploader:
    """Uploads improved best.pt files on one background thread, from a copy (Ultralytics
    rewrites best.pt in place), at most once per `min_interval`; a newer best replaces one
    still waiting."""

    def __init__(self, client, min_interval: float) -> None:
        self.client = client
        self.min_interval = min_interval
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="trainer_sdk-best")
        self._lock = threading.Lock()
        self._last_start = float("-inf")
        self._busy = False
        self._tmp = Path(tempfile.mkdtemp(prefix="trainer_sdk-best-"))

    def offer(self, best: Path, epoch: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._busy or now - self._last_start < self.min_interval:
                return  # the final best.pt is uploaded at the end anyway
            self._busy, self._last_start = True, now
        copy = self._tmp / f"best-epoch{epoch}.pt"
        try:
            shutil.copyfile(best, copy)
        except OSError as exc:
            log.warning("could not copy %s for upload: %s", best, exc)
            with self._lock:
                self._busy = False
            return
        self._executor.submit(self._upload, copy, epoch)

    def _upload(self, copy: Path, epoch: int) -> None:
        try:
            uri = self.client.upload_checkpoint(copy, "best", epoch=epoch)
            if uri:
                log.info("best.pt of epoch %d uploaded: %s", epoch, uri)
        finally:
            copy.unlink(missing_ok=True)
            with self._lock:
                self._busy = False

    def wait(self) -> None:
        self._executor.shutdown(wait=True)
        shutil.rmtree(self._tmp, ignore_errors=True)

"""The Ultralytics trainer: trains a YOLO model and reports everything to the platform.

Configured by the environment only:

- `CALLBACK_URL`, `CALLBACK_TOKEN`, `JOB_ID` (required): what the platform handed the job.
- `MODEL` (`yolov8n.yaml`): a model YAML (`yolov8n.yaml`, `yolov8n-cls.yaml`…, built from
  scratch) or a local `.pt`.
- `DATA`: a `data.yaml`, a dataset directory, or an http(s) URL of a zip (e.g. a presigned
  GET). Empty: the platform's presigned URL for the job's `dataset_uri`.
- `EPOCHS` (10), `IMGSZ` (640), `BATCH` (16; also passed as `nbs`, or short runs learn
  nothing), `DEVICE` (`cpu`; `0`, `0,1`… for GPUs), `WORKERS` (0 dataloader workers).
- `OUTPUT_DIR` (`./runs/job-<JOB_ID>`): run directory, downloaded data, Ultralytics settings.
- `CHECKPOINT_MIN_INTERVAL` (60): least seconds between two best.pt uploads while training.

Fully offline: `YOLO_OFFLINE`, `YOLO_CONFIG_DIR`, `YOLO_AUTOINSTALL=0` and `MPLCONFIGDIR` are
set before Ultralytics is imported, matplotlib's DejaVuSans stands in for the Arial font
Ultralytics would download, and models are built from YAML. The trainer holds no object-store
or MLflow credential: checkpoints and plots go up through presigned URLs from the platform.

Run: `python trainer_images/ultralytics/train.py` (exit status 0 on success; a crash reports
the job failed with its traceback and exits 1).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("trainer")

OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_VERBOSE": "true"}
# Ultralytics integrations that would report elsewhere or reach the network
OTHER_INTEGRATIONS = ("sync", "hub", "mlflow", "clearml", "comet", "dvc", "neptune",
                      "raytune", "tensorboard", "wandb", "platform")


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


class Terminated(Exception):
    """SIGTERM (the container is being stopped): reported as the job's failure."""


def _terminate(signum, frame) -> None:
    raise Terminated(f"the trainer was stopped by signal {signal.Signals(signum).name}")


@dataclass(frozen=True)
class Settings:
    model: str
    data: str
    epochs: int
    imgsz: int
    batch: int
    device: str
    workers: int
    output_dir: Path
    checkpoint_min_interval: float

    @classmethod
    def from_env(cls, environ=os.environ) -> Settings:
        job = environ.get("JOB_ID", "").strip() or "local"
        return cls(
            model=environ.get("MODEL", "").strip() or "yolov8n.yaml",
            data=environ.get("DATA", "").strip(),
            epochs=_number(environ, "EPOCHS", 10, 1),
            imgsz=_number(environ, "IMGSZ", 640, 32),
            batch=_number(environ, "BATCH", 16, 1),
            device=environ.get("DEVICE", "").strip() or "cpu",
            workers=_number(environ, "WORKERS", 0, 0),
            output_dir=Path(environ.get("OUTPUT_DIR", "").strip()
                            or Path("runs") / f"job-{job}").resolve(),
            checkpoint_min_interval=_number(environ, "CHECKPOINT_MIN_INTERVAL", 60.0, 0.0,
                                            float),
        )


def _number(environ, name: str, default, minimum, kind: type = int):
    """`kind` (int or float) from the variable `name`; a malformed value names it."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def prepare_offline(output_dir: Path, environ=os.environ) -> None:
    """Everything Ultralytics would otherwise fetch or probe, set up locally. Must run
    before `import ultralytics`."""
    config_dir = Path(environ.get("YOLO_CONFIG_DIR") or output_dir / "config")
    environ["YOLO_CONFIG_DIR"] = str(config_dir)
    environ.setdefault("MPLCONFIGDIR", str(config_dir / "matplotlib"))
    for name, value in OFFLINE_ENV.items():
        environ.setdefault(name, value)
    fonts = config_dir / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    Path(environ["MPLCONFIGDIR"]).mkdir(parents=True, exist_ok=True)
    source = _dejavu_sans()
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if source and not (fonts / name).exists():
            shutil.copyfile(source, fonts / name)


def _dejavu_sans() -> Path | None:
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        font = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if font.is_file():
            return font
    log.warning("matplotlib's DejaVuSans.ttf not found: plots may try to download a font")
    return None


def disable_other_integrations(output_dir: Path) -> None:
    """Ultralytics' own loggers (MLflow, W&B, hub sync…) stay off: the platform is the one
    place this run reports to."""
    from ultralytics.utils import SETTINGS

    changes = {key: False for key in OTHER_INTEGRATIONS if key in SETTINGS}
    for key, folder in (("datasets_dir", "datasets"), ("weights_dir", "weights"),
                        ("runs_dir", "runs")):
        if key in SETTINGS:
            changes[key] = str(output_dir / folder)
    SETTINGS.update(changes)


def resolve_data(data: str, output_dir: Path, client) -> Path:
    """A path Ultralytics can train on: a data.yaml whose `path` is absolute and exists
    (detection and friends) or an image-folder directory (classification)."""
    if not data:
        data = client.dataset_url() or ""
        if not data:
            raise SettingsError("DATA is not set and the job has no dataset on the platform")
    if data.startswith(("http://", "https://")):
        data = str(download_zip(data, output_dir))
    path = Path(data).expanduser().resolve()
    if path.is_file() and path.suffix == ".zip":
        path = extract_zip(path, output_dir / "dataset")
    if path.is_dir():
        yamls = sorted(path.rglob("data.yaml"), key=lambda p: len(p.parts)) or sorted(
            p for p in path.glob("*.yaml"))
        if not yamls:
            return _dataset_root(path)  # classification: train/ and val/ folders
        path = yamls[0]
    if not path.is_file():
        raise SettingsError(f"DATA {data!r}: no such file or directory")
    return rewrite_yaml(path, output_dir / "data.yaml")


def _dataset_root(path: Path) -> Path:
    """The folder holding train/ (a zip may wrap the dataset in one more folder)."""
    if (path / "train").is_dir():
        return path
    inner = [p for p in path.iterdir() if p.is_dir()]
    if len(inner) == 1 and (inner[0] / "train").is_dir():
        return inner[0]
    raise SettingsError(f"{path} has neither a data.yaml nor a train/ folder")


def rewrite_yaml(source: Path, target: Path) -> Path:
    """Copy a data.yaml with `path` made absolute (relative to the YAML's folder; also
    when it names a folder that does not exist here, as in a zip made elsewhere)."""
    import yaml

    config = yaml.safe_load(source.read_text()) or {}
    base = source.parent
    given = config.get("path")
    if not given:
        root = base
    else:
        root = Path(given)
        if not root.is_absolute():
            root = (base / root).resolve()
        if not root.is_dir():
            root = base
    config["path"] = str(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def download_zip(url: str, output_dir: Path) -> Path:
    import requests

    target = output_dir / "dataset.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading the dataset from %s", url.split("?", 1)[0])
    with requests.get(url, stream=True, timeout=(10, 300)) as response:
        response.raise_for_status()
        with open(target, "wb") as handle:
            for chunk in response.iter_content(1 << 20):
                handle.write(chunk)
    return target


def extract_zip(archive: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.namelist():
            if not (root / member).resolve().is_relative_to(root):
                raise SettingsError(f"{archive}: {member!r} would land outside {target}")
        zipped.extractall(target)
    return target


def train(settings: Settings, client) -> None:
    from ultralytics import YOLO

    from trainer_sdk import LogHandler
    from trainer_sdk.integrations.ultralytics import attach

    disable_other_integrations(settings.output_dir)
    data = resolve_data(settings.data, settings.output_dir, client)
    model = YOLO(settings.model)
    attach(model, client, min_interval=settings.checkpoint_min_interval)
    handler = LogHandler(client)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("ultralytics").addHandler(handler)
    try:
        model.train(data=str(data), epochs=settings.epochs, imgsz=settings.imgsz,
                    batch=settings.batch, nbs=settings.batch, device=settings.device,
                    workers=settings.workers, project=str(settings.output_dir), name="train",
                    exist_ok=True, plots=True, amp=settings.device != "cpu")
    finally:
        logging.getLogger("ultralytics").removeHandler(handler)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s "
                                                   "%(message)s")
    settings = Settings.from_env()
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    prepare_offline(settings.output_dir)

    from trainer_sdk import Client

    signal.signal(signal.SIGTERM, _terminate)
    with Client.from_env() as client:  # a crash reports `failed` with the traceback
        log.info("job %s: training %s on %s for %d epochs (imgsz %d, batch %d, %s)",
                 client.job_id, settings.model, settings.data or "the job's dataset",
                 settings.epochs, settings.imgsz, settings.batch, settings.device)
        train(settings, client)
        if not client.finished:  # on_train_end did not run (e.g. another rank reported)
            client.complete()
        if not client.flush(timeout=60):
            log.warning("some reports are still queued; they stay in %s", client.spool_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Ultralytics integration driven by a fake trainer that fires the events in Ultralytics'
order (per epoch: on_train_epoch_end → on_model_save → on_fit_epoch_end; then the final
evaluation's extra on_fit_epoch_end and on_train_end), against a scripted platform. The
real thing runs in tests/trainer (slow)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests.sdk.servers import FakePlatform, Reply
from trainer_sdk.integrations import ultralytics as integration


class FakeModel:
    def __init__(self) -> None:
        self.callbacks: dict[str, list] = {}

    def add_callback(self, event: str, fn) -> None:
        self.callbacks.setdefault(event, []).append(fn)

    def fire(self, event: str, trainer) -> None:
        for fn in self.callbacks.get(event, []):
            fn(trainer)


class FakeTrainer(SimpleNamespace):
    def label_loss_items(self, loss_items, prefix="train"):
        return {f"{prefix}/{k}": round(float(v), 5) for k, v in loss_items.items()}


def make_trainer(save_dir: Path, epochs: int) -> FakeTrainer:
    weights = save_dir / "weights"
    weights.mkdir(parents=True)
    validator = SimpleNamespace(
        confusion_matrix=SimpleNamespace(matrix=[[5.0, 1.0, 2.0], [0.0, 4.0, 1.0],
                                                 [1.0, 0.0, 0.0]]),
        metrics=SimpleNamespace(box=SimpleNamespace(ap=[0.3, 0.5], ap50=[0.6, 0.8]),
                                ap_class_index=[0, 1]))
    return FakeTrainer(epoch=0, epochs=epochs, tloss=None, metrics={}, lr={}, fitness=None,
                       best_fitness=None, best=weights / "best.pt", last=weights / "last.pt",
                       save_dir=save_dir, args=SimpleNamespace(task="detect"),
                       data={"names": {0: "rectangle", 1: "ellipse"}}, validator=validator,
                       stop=False)


def run_training(model: FakeModel, trainer: FakeTrainer, fitness: list[float]) -> None:
    model.fire("on_pretrain_routine_start", trainer)
    for epoch, fit in enumerate(fitness):
        trainer.epoch = epoch
        trainer.tloss = {"box_loss": 2.0 - epoch / 10, "cls_loss": 1.5, "dfl_loss": 1.2}
        trainer.lr = {"lr/pg0": 0.01, "lr/pg1": 0.01, "lr/pg2": 0.001}
        model.fire("on_train_epoch_end", trainer)
        trainer.metrics = {"metrics/precision(B)": fit, "metrics/recall(B)": fit,
                           "metrics/mAP50(B)": fit, "metrics/mAP50-95(B)": fit / 2,
                           "val/box_loss": 1.0, "val/cls_loss": 0.5, "val/dfl_loss": 0.25}
        trainer.fitness = fit
        if trainer.best_fitness is None or fit > trainer.best_fitness:
            trainer.best_fitness = fit
            trainer.best.write_bytes(f"best of epoch {epoch + 1}".encode())
        trainer.last.write_bytes(f"last of epoch {epoch + 1}".encode())
        model.fire("on_model_save", trainer)
        model.fire("on_fit_epoch_end", trainer)
        if trainer.stop:
            break
    # final_eval: best weights' metrics without val losses, epoch bumped by one
    trainer.metrics = {"metrics/precision(B)": 0.7, "metrics/recall(B)": 0.6,
                       "metrics/mAP50(B)": 0.7, "metrics/mAP50-95(B)": 0.4}
    trainer.epoch += 1
    model.fire("on_fit_epoch_end", trainer)
    trainer.epoch -= 1
    for name in ("confusion_matrix.png", "BoxF1_curve.png", "results.png"):
        (trainer.save_dir / name).write_bytes(b"\x89PNG " + name.encode())
    (trainer.save_dir / "labels.jpg").write_bytes(b"jpeg, not a plot we upload")
    model.fire("on_train_end", trainer)


def test_a_run_reports_epochs_checkpoints_plots_validation_and_completion(
        scripted, make_client, tmp_path):
    FakePlatform(scripted, multipart=False)
    client = make_client(f"{scripted.url}/api/v1", job_id=7)
    model, trainer = FakeModel(), make_trainer(tmp_path / "run", epochs=3)
    integration.attach(model, client, min_interval=0)

    run_training(model, trainer, fitness=[0.2, 0.5, 0.4])
    client.close()

    progress = [r.json() for r in scripted.matching("/callback/progress")]
    assert [p["current_epoch"] for p in progress] == [1, 2, 3]
    assert all(p["total_epochs"] == 3 for p in progress)
    assert set(progress[0]["metrics"]) == {
        "train/box_loss", "train/cls_loss", "train/dfl_loss", "metrics/precision(B)",
        "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)", "val/box_loss",
        "val/cls_loss", "val/dfl_loss", "lr/pg0", "lr/pg1", "lr/pg2"}

    asks = [r.json() for r in scripted.matching("/checkpoint/get-upload-url")]
    kinds = [(a["checkpoint_type"], a.get("epoch")) for a in asks]
    assert kinds[-2:] == [("best", 2), ("last", 3)]         # final best and last
    assert set(kinds[:-2]) <= {("best", 1), ("best", 2)}    # improvements while training

    plots = [r.json() for r in scripted.matching("/artifacts/get-upload-url")]
    assert sorted(p["filename"] for p in plots) == [
        "BoxF1_curve.png", "confusion_matrix.png", "results.png"]

    (validation,) = [r.json() for r in scripted.matching("/validation/jobs/7/results")]
    assert validation["job_id"] == 7 and validation["epoch"] == 3
    assert validation["task_type"] == "detection"
    assert validation["class_names"] == ["rectangle", "ellipse"]
    assert validation["confusion_matrix"] == [[5, 1, 2], [0, 4, 1], [1, 0, 0]]
    assert validation["primary_metric_name"] == "metrics/mAP50-95(B)"
    assert validation["primary_metric_value"] == 0.4
    assert validation["overall_loss"] == 1.75  # the last epoch's val losses
    assert validation["metrics"]["per_class"] == {
        "rectangle": {"ap50": 0.6, "ap50_95": 0.3}, "ellipse": {"ap50": 0.8, "ap50_95": 0.5}}
    assert set(validation["visualization_urls"]) == {"BoxF1_curve", "confusion_matrix",
                                                     "results"}
    assert all(v.startswith("s3://") for v in validation["visualization_urls"].values())

    (completion,) = [r.json() for r in scripted.matching("/callback/completion")]
    assert completion["status"] == "completed"
    assert completion["final_metrics"]["metrics/mAP50-95(B)"] == 0.4
    assert completion["best_checkpoint_path"] == "s3://training/jobs/7/best.pt"
    assert completion["last_checkpoint_path"] == "s3://training/jobs/7/last.pt"


def test_a_stop_request_stops_the_trainer_and_ends_cancelled(scripted, make_client, tmp_path):
    FakePlatform(scripted, multipart=False)
    scripted.script("/callback/progress", [
        Reply(202, {"event_id": 1, "job_status": "running"}),
        Reply(202, {"event_id": 2, "job_status": "running", "stop_requested": True})])
    client = make_client(f"{scripted.url}/api/v1", job_id=7)
    model, trainer = FakeModel(), make_trainer(tmp_path / "run", epochs=50)
    integration.attach(model, client)
    original = model.callbacks["on_fit_epoch_end"][0]

    def then_wait(trainer):  # let the answer arrive before the next epoch, as real epochs do
        original(trainer)
        client.flush(5)
    model.callbacks["on_fit_epoch_end"] = [then_wait]

    run_training(model, trainer, fitness=[0.1 * n for n in range(1, 51)])

    assert trainer.stop is True
    epochs = [r.json()["current_epoch"] for r in scripted.matching("/callback/progress")]
    assert epochs in ([1, 2], [1, 2, 3])  # stops at the end of the epoch that saw it
    (completion,) = [r.json() for r in scripted.matching("/callback/completion")]
    assert completion["status"] == "cancelled"


def test_reporting_problems_never_reach_the_training_loop(make_client, tmp_path, caplog):
    client = make_client("http://127.0.0.1:9/api/v1", job_id=7, call_timeout=0.2,
                         close_timeout=0.5)
    model, trainer = FakeModel(), make_trainer(tmp_path / "run", epochs=2)
    integration.attach(model, client)
    trainer.validator = None                       # no confusion matrix, no per-class AP
    trainer.label_loss_items = lambda *a, **k: 1 / 0  # a trainer variant that breaks
    run_training(model, trainer, fitness=[0.1, 0.2])  # must not raise
    assert client.finished

from __future__ import annotations

import pytest
from mlflow.utils.validation import _validate_metric_name

from platform_app.services.tracking import legal_metric_key


@pytest.mark.parametrize("original, legal", [
    ("metrics/mAP50-95(B)", "metrics/mAP50-95B"),
    ("metrics/precision(B)", "metrics/precisionB"),
    ("train/box_loss", "train/box_loss"),
    ("lr/pg0", "lr/pg0"),
    ("val/loss", "val/loss"),
    ("acc@top5", "acc_top5"),
    ("/leading//double/", "leading/double"),
    ("a/../b", "a/_/b"),
    ("()", "_"),
    ("métrique", "métrique"),
])
def test_keys_become_legal_and_stable(original, legal):
    assert legal_metric_key(original) == legal
    _validate_metric_name(legal)  # raises if MLflow would refuse it

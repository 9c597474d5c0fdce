"""trainer_sdk: report a training job to the training-callback platform.

    from trainer_sdk import Client

    with Client.from_env() as client:          # CALLBACK_URL, CALLBACK_TOKEN, JOB_ID
        for epoch in range(1, epochs + 1):
            ...
            client.report_progress(epoch, {"train/loss": loss}, total_epochs=epochs)
            if client.stop_requested:          # an operator cancelled the job
                break
        uri = client.upload_checkpoint("weights/best.pt", "best", epoch=epoch)
        client.complete({"metrics/mAP50-95(B)": best}, best_checkpoint_path=uri)

Depends on `requests` only. Ultralytics: `trainer_sdk.integrations.ultralytics.attach(model,
client)`.
"""

__version__ = "0.1.0"

from trainer_sdk.client import Client, LogHandler  # noqa: E402
from trainer_sdk.errors import APIError, SDKError, TransportError  # noqa: E402

__all__ = ["Client", "LogHandler", "SDKError", "APIError", "TransportError", "__version__"]

"""How a projection failed decides what the queue does next."""


class SinkUnavailable(Exception):
    """A sink (MLflow, the object store, the DB) failed in a way that may pass: retry."""


class SinkRejected(Exception):
    """The sink refused the data itself: retrying cannot help, the event fails."""

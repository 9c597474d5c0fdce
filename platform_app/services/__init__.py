"""Services: the only code that talks to MLflow, the object store, Redis and the outbox."""

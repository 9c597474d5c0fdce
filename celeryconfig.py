"""Celery policy that does not depend on the environment (URLs come from Config).

Delivery is at-least-once: a task is acknowledged after it ran (acks_late, set per task
on the projection tasks, which are idempotent), a worker killed mid-task gives its message
back, and each worker process holds one unstarted message at a time so a crash strands
little. Results are never stored: state lives in the platform DB.
"""

task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None
worker_prefetch_multiplier = 1
task_acks_late = True
task_reject_on_worker_lost = True
# Task events for Flower.
worker_send_task_events = True
# No "task-sent" event: one more Redis publish on every request, for a state Flower
# also learns from the worker's own task-received event.
task_send_sent_event = False
# The request path enqueues after commit; if the broker is down it must give up quickly
# (the outbox sweeper re-enqueues) rather than hold the HTTP request.
task_publish_retry = True
task_publish_retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}
broker_connection_timeout = 2
broker_connection_retry_on_startup = True
broker_transport_options = {
    # A task waiting for a retry (ETA) longer than this would be redelivered twice.
    "visibility_timeout": 3600,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
task_default_queue = "platform"
worker_hijack_root_logger = False

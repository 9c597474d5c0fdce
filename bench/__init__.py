"""`make bench`: the platform's performance figures, each next to its baseline from the same run.

The request path's promise ("fast, and the queue absorbs the slow work") is only worth
something when measured against the alternatives on the same machine, the same server
settings and the same minute. This package starts a private stack (PostgreSQL, Redis,
SeaweedFS, MLflow on PostgreSQL, the API under gunicorn, Celery workers), drives it with wrk
and a few Python clients, and writes `.run/bench/latest.json` plus a markdown table.

Layout: `settings` (durations and server options), `services` (the stack), `app` +
`comparison` (the benchmark-only endpoints), `platform_client` (jobs and callback bodies),
`load` (wrk and its Lua), `paced` (a fixed-rate Python sender that sees each answer),
`figures/` (one module per group of figures), `results` (figures and targets) and `report`.
"""

"""One module per group of figures. Each module has:

- `NAMES`: the names `--only` selects it by (a module may measure a subset of its figures);
- `needs(selected)`: the optional services it needs ("mlflow", "workers");
- `figures(settings)` and `targets(settings)`: what it reports and the issue's goals for it;
- `run(ctx, selected)`: measures and records into `ctx.results`.

Modules run in the order below: later ones read earlier results (half load is half the
measured saturation; freshness loads MLflow at half of what it was measured to absorb).
Adding a figure group is one module here.
"""

from __future__ import annotations

from types import ModuleType

from bench.figures import freshness, latency, mlflow_sink, sdk, throughput, upload, ws

MODULES: tuple[ModuleType, ...] = (throughput, latency, mlflow_sink, freshness, upload, sdk, ws)


def all_names() -> list[str]:
    return [name for module in MODULES for name in sorted(module.NAMES)]


def select(only: set[str] | None) -> list[tuple[ModuleType, frozenset[str]]]:
    """The modules to run with the names selected in each (all of them without --only)."""
    chosen = []
    for module in MODULES:
        names = module.NAMES if only is None else module.NAMES & only
        if names:
            chosen.append((module, frozenset(names)))
    return chosen

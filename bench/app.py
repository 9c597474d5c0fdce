"""The app gunicorn serves during the benchmark: the real platform plus the comparison
endpoints, so that every endpoint compared runs in the same processes with the same settings.

`gunicorn bench.app:app` — never deployed; the comparison endpoints exist only here.
"""

from __future__ import annotations

from bench.comparison import bp
from platform_app import create_app
from platform_app.extensions import rest_api

app = create_app()
rest_api.register_blueprint(bp)

"""The v1 HTTP API. One blueprint per resource module; all share the body parser below."""

from __future__ import annotations

import json

from flask import Request
from flask_smorest import Blueprint as _Blueprint
from webargs import core
from webargs.flaskparser import FlaskParser

URL_PREFIX = "/api/v1"


class JSONBodyParser(FlaskParser):
    """Parses the body as JSON whatever its Content-Type (trainers and curl often send
    none), so that a body that is not JSON is a 400 rather than a list of "missing" fields.
    NaN/Infinity literals become the string tokens the schemas accept."""

    def _raw_load_json(self, req: Request):
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        try:
            # parse_constant gets exactly "NaN", "Infinity" or "-Infinity": the tokens
            return json.loads(data, parse_constant=str)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return self._handle_invalid_json_error(exc, req)


class Blueprint(_Blueprint):
    ARGUMENTS_PARSER = JSONBodyParser()

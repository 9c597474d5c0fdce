"""Operator view of the outbox: events that failed for good, and a replay button."""

from __future__ import annotations

import sqlalchemy as sa

from platform_app.api import URL_PREFIX, Blueprint
from platform_app.auth import require_operator
from platform_app.errors import APIError
from platform_app.extensions import db
from platform_app.models import Event, EventState
from platform_app.schemas import EventSchema, PageArgsSchema
from platform_app.services import outbox

bp = Blueprint("events", __name__, url_prefix=f"{URL_PREFIX}/events",
               description="Outbox events (operator API key)")
event_schema = EventSchema()
events_schema = EventSchema(many=True)


@bp.route("/failed", methods=["GET"])
@require_operator
@bp.arguments(PageArgsSchema(), location="query")
def list_failed(args: dict):
    query = sa.select(Event).where(Event.state == EventState.FAILED).order_by(Event.id)
    page = db.paginate(query, page=args["page"], per_page=args["per_page"], error_out=False)
    return {"items": events_schema.dump(page.items), "page": page.page,
            "per_page": page.per_page, "total": page.total}


@bp.route("/<int:event_id>", methods=["GET"])
@require_operator
def read_event(event_id: int):
    return event_schema.dump(_get_event(event_id))


@bp.route("/<int:event_id>/replay", methods=["POST"])
@require_operator
def replay_event(event_id: int):
    event = _get_event(event_id)
    if event.state != EventState.FAILED:
        raise APIError("CONFLICT", f"only failed events can be replayed (this one is "
                       f"{event.state.value})", {"event_id": event_id})
    outbox.replay_failed(event)
    return event_schema.dump(event), 202


def _get_event(event_id: int) -> Event:
    event = db.session.get(Event, event_id)
    if event is None:
        raise APIError.not_found("event", event_id=event_id)
    return event

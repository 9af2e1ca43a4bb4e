"""The hub's HTTP API (FastAPI). Build it with :func:`shopfloor.hub.api.app.create_app`."""

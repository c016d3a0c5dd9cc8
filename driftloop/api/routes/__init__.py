"""The API's routers, one per resource; each module's ``router(deps)`` builds its router for one app."""

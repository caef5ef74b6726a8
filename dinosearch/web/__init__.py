"""The web app (search page + JSON API), served by `dinosearch serve`.

    settings.py  what the server was asked for; bind and Host rules (no FastAPI import: the CLI reads it)
    app.py       create_app() / app_from_env(): middleware, error mapping, the page, lifespan
    routes.py    /api/search, /api/images/{id}[/similar|/thumbnail], /api/stats
    engine.py    the index and the model off the event loop: index lock, decode pool, batching model thread
    media.py     original files and thumbnails, by id only
    guard.py     Host check, whole-body size cap, default response headers
    auth.py      the API key and signed image URLs
"""

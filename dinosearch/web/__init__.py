"""The web app (search page + JSON API)."""

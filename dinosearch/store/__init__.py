"""Storage: SQLite (the truth, via SQLAlchemy + Alembic) and FAISS (a cache rebuilt from it)."""

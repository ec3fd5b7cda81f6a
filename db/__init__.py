"""The ledger: SQLAlchemy 2 models, engines, queries and migrations. The source of truth."""

"""Postgres: typed models, engines created per process, and the migrations' target metadata."""

"""Command modules: each defines one typer app (its commands) that hpo.cli joins with add_typer."""

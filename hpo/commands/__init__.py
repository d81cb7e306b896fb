"""Command modules; each registers its commands on `hpo.cli.app` when imported."""

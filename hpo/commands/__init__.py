"""Command modules; each registers its commands on `hpo.cli.app` when imported."""
from hpo.commands import retrain  # noqa: F401  (hpo retrain, hpo export)
from hpo.commands import dashboard  # noqa: F401  (hpo dashboard, hpo report)
from hpo.commands import study  # noqa: F401  (hpo study ..., hpo worker)
from hpo.commands import summary  # noqa: F401  (hpo study summary)

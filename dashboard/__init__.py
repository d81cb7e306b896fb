"""optuna-dashboard launch and plotly reports over the study storage (reads storage; the trials' notes and
curve tables are written by the workers, hpo.running.notes). Nothing is imported here: `hpo --help` loads
dashboard.commands, which must not pull in torch."""

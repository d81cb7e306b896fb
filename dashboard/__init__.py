"""optuna-dashboard launch and plotly reports over the study storage."""

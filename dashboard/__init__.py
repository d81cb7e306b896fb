"""optuna-dashboard launch and plotly reports over the study storage (reads storage; the trials' notes and
curve tables are written by the workers, hpo.notes)."""

from dashboard.app import DashboardConfig, StudyArtifactStore, create_app, run_dashboard
from dashboard.report import build_report, report_study, write_report

__all__ = ["DashboardConfig", "StudyArtifactStore", "build_report", "create_app", "report_study", "run_dashboard",
           "write_report"]

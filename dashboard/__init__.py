"""optuna-dashboard launch and plotly reports over the study storage (reads storage; writes only notes and
learning-curve artifacts, through `annotate_trial`)."""

from dashboard.app import DashboardConfig, StudyArtifactStore, create_app, run_dashboard
from dashboard.notes import annotate_study, annotate_trial
from dashboard.report import build_report, report_study, write_report

__all__ = ["DashboardConfig", "StudyArtifactStore", "annotate_study", "annotate_trial", "build_report",
           "create_app", "report_study", "run_dashboard", "write_report"]

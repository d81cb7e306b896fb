"""THE one module that touches optuna's internals: RDBStorage methods overridden or wrapped by name, some of
them private ones optuna's trial cache calls instead of the public API, and one query of optuna's own tables
(heartbeat times, which its API does not show). Everything else in this project uses optuna's public API only.

Why a subclass at all: optuna's own behaviour loses data here. pool_pre_ping only replaces connections that
died while idle; one that dies during a call fails it, and with it the trial or the worker
(test_worker_survives_its_database_connections_being_dropped; a server restart killed every worker:
test_workers_wait_out_a_database_restart). Each call is one transaction, rolled back by the failure, so
running it again on a fresh connection is safe. A name listed in RETRIED_CALLS that the installed optuna lacks
is logged at import and fails test_every_retried_storage_call_exists_in_this_optuna, instead of silently
losing its retry.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState
import sqlalchemy
from sqlalchemy.exc import SQLAlchemyError

from hpo.storage.failures import driver_words, is_connection_lost, is_transient
from hpo.storage.retry import Backoff, retry
from hpo.storage.signals import interrupt_received, interrupts_held

RECONNECT_WINDOW_S = 60  # a storage call whose server went away is tried again for this long (a restart)
FIRST_PAUSE_S = 0.5
_log = logging.getLogger(__name__)


def _lost_connection(error: BaseException) -> bool:
    return isinstance(error, (optuna.exceptions.StorageInternalError, SQLAlchemyError)) and is_connection_lost(error)


def _warn_first_wait(error: BaseException, pause: float) -> None:
    if pause == FIRST_PAUSE_S:
        _log.warning("warning: database unreachable (%s); retrying for up to %d s", driver_words(error),
                     RECONNECT_WINDOW_S)


def retrying(method: Callable) -> Callable:
    """`method`, tried again at once and then with growing pauses while its database is unreachable, for up to
    RECONNECT_WINDOW_S; interrupts are held during each try, and a received one ends the waiting."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        backoff = Backoff(first=FIRST_PAUSE_S, longest=8.0, window_s=RECONNECT_WINDOW_S, immediate_retry=True)
        return retry(lambda: method(self, *args, **kwargs), _lost_connection, backoff, around=interrupts_held,
                     on_retry=_warn_first_wait, keep_waiting=lambda: interrupt_received() is None)
    return call


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose calls survive their connection dying under them or the server restarting, are not cut
    by Ctrl-C, and whose trials get their first heartbeat as they start RUNNING."""

    started_trial_id: int | None = None  # the trial this process last set RUNNING (hpo's worker records its interrupt)

    def record_heartbeat(self, trial_id: int) -> None:
        """A heartbeat that fails anyway is skipped (the next comes within heartbeat_interval): the heartbeat
        thread must never die and leave a live trial looking dead."""
        try:
            retrying(optuna.storages.RDBStorage.record_heartbeat)(self, trial_id)
        except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as e:
            if not is_transient(e):
                raise

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """A trial gets its first heartbeat as it becomes RUNNING, in the same uninterruptible stretch. optuna's
        own starts only after `ask` returns, and a RUNNING trial with no heartbeat is never stale: a worker
        killed in between left it RUNNING for ever (test_a_worker_killed_as_a_trial_starts_leaves_it_to_be_rerun,
        test_a_trial_interrupted_as_it_starts_is_requeued)."""
        with interrupts_held():
            trial = retrying(optuna.storages.RDBStorage._create_new_trial)(self, study_id, template_trial)
            if trial.state == TrialState.RUNNING:
                self._started(self.get_trial_id_from_study_id_trial_number(study_id, trial.number))
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        tries = 0

        def once(storage: ReconnectingRDBStorage, *args: Any) -> bool:
            nonlocal tries
            tries += 1
            return optuna.storages.RDBStorage.set_trial_state_values(storage, *args)

        with interrupts_held():
            try:
                updated = retrying(once)(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Tried again after the connection died during a commit the server did make: the trial holds
                # this very result (test_a_result_whose_commit_reply_was_lost_is_not_a_crash). On a first try it
                # was finished by another process, and optuna's fail_stale_trials must get the error or it
                # queues a second re-run (test_two_workers_failing_the_same_stale_trial_queue_one_rerun).
                if tries == 1:
                    raise
                stored = self.get_trial(trial_id)
                if stored.state != state or stored.values != (list(values) if values is not None else None):
                    raise
                updated = True
            if updated and state == TrialState.RUNNING:  # popped from the queue
                self._started(trial_id)
        return updated

    def _started(self, trial_id: int) -> None:
        self.started_trial_id = trial_id
        if self.get_heartbeat_interval() is not None:
            self.record_heartbeat(trial_id)


# Each is one transaction of its own (so safe to run again): the storage API, and the private ones optuna's
# cache (which wraps every RDBStorage a study uses) calls instead of the public ones.
RETRIED_CALLS = (
    "create_new_study", "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "set_study_user_attr", "set_study_system_attr",
    "get_all_studies", "create_new_trial", "set_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "get_best_trial",
    "get_trial_param", "get_trial_user_attrs", "get_trial_system_attrs",
    "_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id", "_get_stale_trial_ids",
)
MISSING_CALLS = tuple(name for name in RETRIED_CALLS if not hasattr(optuna.storages.RDBStorage, name))
if MISSING_CALLS:
    _log.warning("warning: this optuna (%s) has no RDBStorage.%s: those calls are not retried when the "
                 "database connection drops", optuna.__version__, ", ".join(MISSING_CALLS))
for _name in RETRIED_CALLS:
    if _name not in MISSING_CALLS and _name not in vars(ReconnectingRDBStorage):
        setattr(ReconnectingRDBStorage, _name, retrying(getattr(optuna.storages.RDBStorage, _name)))


# optuna's RDB schema (tables trials, studies, trial_heartbeats): the heartbeat of every RUNNING trial of a study.
RUNNING_HEARTBEATS = sqlalchemy.text(
    "SELECT t.number, h.heartbeat, CURRENT_TIMESTAMP FROM trials t JOIN studies s ON s.study_id = t.study_id "
    "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id WHERE s.study_name = :name AND t.state = 'RUNNING'")


def running_heartbeats(storage: optuna.storages.RDBStorage, study_name: str) -> list[tuple[int, Any, Any]]:
    """(trial number, its last heartbeat or None, the database's now) of every RUNNING trial of the study:
    `hpo study verify` and `hpo study status` flag trials whose worker is gone."""
    with storage.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(RUNNING_HEARTBEATS, {"name": study_name}).all()]

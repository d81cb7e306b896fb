"""The `hpo` command: one typer app per command module (hpo/commands/), joined here with add_typer.

Each command parses its options, calls one library function and prints. Library code raises CifarNetError /
HPOError (or OutputError for a path it cannot write); only `main()` turns them into one `error: ...` line and
exit code 1. Command modules import torch, optuna and the library inside the command bodies, so `hpo --help`
loads typer only.
"""

from __future__ import annotations

import os
import signal
import sys


STOPPED = "interrupted: stopped before finishing"  # Ctrl-C where no command said what is left (= INTERRUPTED + ...)


def _interrupted_while_starting(signum: int, frame: object) -> None:
    # Ctrl-C while Python is still importing: no 40-line KeyboardInterrupt traceback from inside an import.
    sys.stderr.write(f"{STOPPED}\n")
    os._exit(130)


# Installed before anything is imported and restored once this module is loaded (spawned worker processes
# import it too, and must keep Python's own Ctrl-C); the heavy imports happen inside the commands, under main().
# A worker process starts with SIGINT ignored (hpo.running.launcher) and keeps it so until it can handle it.
_sigint_before_import = signal.getsignal(signal.SIGINT)
if _sigint_before_import is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, _interrupted_while_starting)

from importlib.metadata import PackageNotFoundError, entry_points, version  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

from hpo.commands import data, distributed, model, retrain, study, train  # noqa: E402
from hpo.commands.options import INTERRUPTED_EXIT, CommandInterrupted  # noqa: E402
from hpo.terminal import printable  # noqa: E402


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"hpo {version('cifarnet-hpo')}")
        except PackageNotFoundError:
            typer.echo("hpo (not installed: running from a source tree)")
        raise typer.Exit()


# rich_markup_mode=None: usage errors stay plain text (main() prints one line), and help texts keep their
# literal [brackets] (rich markup would eat "[model]").
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="CifarNet hyperparameter-optimisation service (Optuna studies on SQL storage).")
app.add_typer(model.model_app, name="model")
app.add_typer(data.data_app, name="data")
app.add_typer(study.app, name="study")
for commands in (train.app, retrain.app, distributed.app):
    app.add_typer(commands)  # no name: these commands sit at the top level (hpo train, hpo retrain, ...)
# Packages built on hpo add their commands (the dashboard package: `hpo dashboard`, `hpo report`), so hpo
# never imports them.
for plugin in entry_points(group="hpo.commands"):
    app.add_typer(plugin.load())


if _sigint_before_import is not None:
    signal.signal(signal.SIGINT, _sigint_before_import)


@app.callback()
def _root(
    show_version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """CifarNet hyperparameter-optimisation service (Optuna studies on SQL storage)."""


# Commands that only read the study storage: they never need torch, so they start in a third of the time
# (tests/hpo/test_cli.py::test_inspection_commands_do_not_load_torch).
TORCH_FREE = {("study", "status"), ("study", "best"), ("study", "list"), ("study", "verify"), ("study", "summary"),
              ("dashboard",), ("report",), ("storage-proxy",)}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line and a non-zero exit for every expected failure, Ctrl-C included."""
    from cifarnet.errors import CifarNetError, OutputError

    args = sys.argv[1:] if argv is None else list(argv)
    if args and not {"--help", "-h", "--version"} & set(args):
        # The libraries every working command loads, imported while Ctrl-C still means "exit 130, one line":
        # a KeyboardInterrupt inside numpy's or torch's own imports leaves them half-initialised (test:
        # tests/hpo/test_cli.py::test_ctrl_c_while_starting_prints_no_traceback).
        signal.signal(signal.SIGINT, _interrupted_while_starting)
        import numpy  # noqa: F401  (optuna imports it for every command)
        if tuple(args[:2]) not in TORCH_FREE and tuple(args[:1]) not in TORCH_FREE:
            import torch  # noqa: F401
    # Python's own Ctrl-C from here on (the workers record interrupted trials on KeyboardInterrupt). This also
    # undoes SIG_IGN, which a non-interactive shell gives its background jobs and children inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = app(args=argv, prog_name="hpo", standalone_mode=False)
        if code == INTERRUPTED_EXIT:  # typer turns a KeyboardInterrupt no command handled into this code
            print(STOPPED, file=sys.stderr)
    except typer.TyperException as e:  # a usage error: one line, not click's three or typer's boxed panel
        ctx = getattr(e, "ctx", None)
        if ctx is not None and e.format_message() == ctx.get_help():  # a group called without a command
            e.show()
        else:
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"error: {e.format_message()}{hint}", file=sys.stderr)
        code = e.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        code = 1
    except (KeyboardInterrupt, CommandInterrupted) as e:
        print(str(e) if isinstance(e, CommandInterrupted) else STOPPED, file=sys.stderr)
        code = getattr(e, "exit_code", INTERRUPTED_EXIT)
    except (CifarNetError, OutputError) as e:  # messages quote names and reasons from databases and files
        print(f"error: {printable(e)}", file=sys.stderr)
        code = 1
    except Exception as e:  # an unexpected bug: still one line, with a way to get the traceback
        if os.environ.get("HPO_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {printable(e)} (set HPO_DEBUG=1 for the traceback)",
              file=sys.stderr)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)

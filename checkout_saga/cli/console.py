"""How ``checkout-saga`` behaves in front of an operator, for every command at once.

- A mistake (a bad value, a missing file, a port in use, a wrong setting in
  the environment) is one line on stderr and a non-zero exit, never a
  traceback nor Typer's boxed usage panel: an operator in an incident reads
  the line, not a screen of frames.
- ``--help`` lists the commands in the order an operator meets them, in
  panels, and names a value by its role (``--port PORT``), never by its
  Python type (``<int>``, ``<bool>`` on a flag).

``OperatorConsole`` is the root group's class (``typer.Typer(cls=...)``); the
parameters several commands share (a file to read, a port to serve on) are
declared once in ``checkout_saga.cli.params``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from typer._click import Command, Context
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperArgument, TyperGroup

from messaging.errors import OperatorInputError

# Where every command writes its refusals: soft wrap, so that a refusal stays
# one line at any terminal width.
err = Console(stderr=True, soft_wrap=True)

# (panel, commands): the order of a first day, then of an incident.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Run", ("up", "demo", "topics", "supervise")),
    ("Day to day", ("stock", "promo", "saga", "order", "analytics")),
    ("Incidents", ("verify", "dlq", "replay")),
    ("Measure", ("bench", "chaos")),
)
ORDER = tuple(name for _, names in PANELS for name in names)


class OperatorConsole(TyperGroup):
    def list_commands(self, ctx: Context) -> list[str]:
        known = [n for n in ORDER if n in self.commands]
        return known + [n for n in self.commands if n not in ORDER]

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        for name, command in self.commands.items():
            command.rich_help_panel = next(  # type: ignore[attr-defined]
                (panel for panel, names in PANELS if name in names), None)
        for command in _walk(self):
            _name_values_by_role(command)
        # Click's standalone mode would print its own (multi-line) errors: run
        # without it, then exit as it would have.
        run = super().main
        if not standalone_mode:
            return run(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = run(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except NoArgsIsHelpError as exc:  # the help was printed as it was raised
            sys.exit(exc.exit_code)
        except ClickException as exc:
            _one_line(_click_message(exc))
            sys.exit(exc.exit_code)
        except OperatorInputError as exc:
            _one_line(str(exc))
            sys.exit(2)
        except ValidationError as exc:  # a setting read from the environment
            _one_line(settings_message(exc))
            sys.exit(2)
        except typer.Abort:
            _one_line("Aborted.")
            sys.exit(1)
        # Without standalone mode Click returns typer.Exit's code instead of exiting.
        sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


def names_table(*headers: str, names: Iterable[str], title: str | None = None) -> Table:
    """A table whose first column holds names an operator copies (topics,
    SKUs): never cut at any width; the other columns fold instead."""
    widest = max((len(n) for n in names), default=0)
    # No vertical rules, padding shared between columns: room for the names.
    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    table.add_column(headers[0], no_wrap=True, min_width=max(widest, len(headers[0])))
    for header in headers[1:]:
        table.add_column(header, overflow="fold")
    return table


def _one_line(message: str) -> None:
    typer.echo(" ".join(message.split()), err=True)


def _click_message(exc: ClickException) -> str:
    message = exc.format_message()
    ctx = exc.ctx if isinstance(exc, UsageError) else None
    if ctx is not None:
        message = f"{message.rstrip('.')}; see '{ctx.command_path} --help'."
    return message


def settings_message(exc: ValidationError) -> str:
    """``Settings`` fields are their environment variables (no prefix) upper-cased."""
    parts = []
    for e in exc.errors():
        name = ".".join(str(x) for x in e["loc"]).upper()
        parts.append(f"{name}={e.get('input')!r}: {e['msg']}")
    return f"Bad setting ({exc.title}): {'; '.join(parts)}. Fix it in the environment."


def _walk(command: Command) -> Iterator[Command]:
    yield command
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            yield from _walk(sub)


def _name_values_by_role(command: Command) -> None:
    """A flag takes no value, so it shows none; an option shows its name
    (``--port PORT``) unless it declares a metavar of its own."""
    params = list(command.params)
    help_option = command.get_help_option(Context(command, help_option_names=["--help"]))
    if help_option is not None:
        params.append(help_option)
    for param in params:
        if isinstance(param, TyperArgument):
            # Typer has no setting to hide an argument's type; its name (the
            # metavar) says its role already.
            param.display_type_rich = _no_type  # type: ignore[method-assign]
        if param.metavar is not None:
            continue
        is_flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
        param.metavar = "" if is_flag else (param.name or "value").upper()


def _no_type(ctx: Context) -> None:
    return None

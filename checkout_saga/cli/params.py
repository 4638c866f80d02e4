"""Parameters several commands take, declared once so that each is checked
(and refused in one line, see ``checkout_saga.cli.console``) the same way."""

from __future__ import annotations

import errno
import socket
from typing import Any

import typer

JSON_OPT: Any = typer.Option(False, "--json", help="Print JSON for scripts.")


def file_argument(help: str) -> Any:
    """A file to read: Click refuses a missing path, a folder and an unreadable file."""
    return typer.Argument(..., help=help, exists=True, dir_okay=False, readable=True,
                          resolve_path=False, metavar="FILE")


def port_option(help: str) -> Any:
    """A TCP port to serve on; unset means the setting's default."""
    return typer.Option(None, "--port", help=help, min=1, max=65535)


def ensure_can_bind(host: str, port: int, option: str = "--port") -> None:
    """Bind once and let go, before announcing the address: a port in use is
    an operator's mistake, to be said in one line, not a server's traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise typer.BadParameter(f"cannot resolve host {host!r} ({exc.strerror})",
                                 param_hint="--host") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind(address)
        except OSError as exc:
            what = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise typer.BadParameter(f"{host}:{port} {what}; choose another with {option}",
                                     param_hint=option) from exc

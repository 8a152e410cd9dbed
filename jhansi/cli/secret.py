"""``jhansi secret``: store, list and remove the secrets a sandbox may use, never showing values.

Values live in the OS keyring; where there is none, a secret NAME comes from the
environment variable NAME of the process that runs jhansi.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState

if TYPE_CHECKING:
    from jhansi.egress.secrets import SecretStore

app = typer.Typer(
    help="Store, list and remove the secrets scripts may use through the egress proxy "
    "(values are never shown).",
    no_args_is_help=True,
)

NameArgument = Annotated[
    str,
    typer.Argument(
        metavar="NAME",
        help="The secret's name; the sandbox sees an environment variable of that name "
        "holding a placeholder.",
    ),
]


def _store() -> SecretStore:
    from jhansi.egress.secrets import SecretStore
    from jhansi.paths import Paths

    return SecretStore.from_paths(Paths.from_environment())


def _read_value(name: str) -> str:
    """The value: typed twice, hidden, at a terminal; else all of stdin, one newline dropped."""
    from jhansi.errors import UsageError

    if sys.stdin.isatty():
        value = str(
            typer.prompt(f"Value of {name}", hide_input=True, confirmation_prompt=True, err=True)
        )
    else:
        value = sys.stdin.read()
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    if not value:
        raise UsageError(
            f"no value given for {name}",
            hint=f"Type it at the prompt, or pipe it in: `printenv {name} | jhansi secret set "
            f"{name}`.",
        )
    return value


@app.command("set")
def set_secret(ctx: typer.Context, name: NameArgument, json_output: JsonFlag = False) -> None:
    """Store a secret's value in the OS keyring.

    At a terminal the value is asked for twice without echo; otherwise it is read
    from stdin (one trailing newline removed), so it never appears on a command line.
    """
    from jhansi.cli._output import print_json

    ctx.ensure_object(CliState).json = json_output
    store = _store()
    store.writable_keyring(name)  # refuse before asking for the value
    store.set(name, _read_value(name))
    where = store.backend_description()
    if json_output:
        print_json({"status": "ok", "stored": name, "backend": where})
    else:
        typer.echo(f"stored {name} ({where})")


@app.command("ls")
def list_secrets(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """List secret names, where each value comes from, and the hosts each is bound to.

    Lists the stored secrets and those bound in ``[secrets.NAME]`` of the
    configuration that applies here (user and project config). Values are never
    read for this beyond asking whether they exist, and never shown.
    """
    from jhansi.cli._output import print_json, stdout_console
    from jhansi.config import load_settings

    ctx.ensure_object(CliState).json = json_output
    bound = load_settings().secrets
    store = _store()
    sources = store.sources(extra=tuple(bound))
    where = store.backend_description()
    hosts = {name: list(conf.hosts) for name, conf in bound.items()}
    if json_output:
        print_json(
            {
                "status": "ok",
                "backend": where,
                "secrets": [
                    {"name": s.name, "source": s.origin, "hosts": hosts.get(s.name, [])}
                    for s in sources
                ],
            }
        )
        return
    from rich.markup import escape
    from rich.table import Table

    console = stdout_console()
    if not sources:
        console.print(f"no secrets stored or bound; values come from {where}", soft_wrap=True)
        return
    table = Table(title=f"secrets ({where})", title_justify="left")
    table.add_column("name")
    table.add_column("value from")
    table.add_column("bound to")
    for source in sources:
        shown = "[red]missing[/]" if source.origin == "missing" else source.origin
        targets = hosts.get(source.name)
        table.add_row(
            source.name,
            shown,
            escape(", ".join(targets)) if targets else "[dim]no host (use --secret NAME@HOST)[/]",
        )
    console.print(table)


@app.command("rm")
def remove_secret(ctx: typer.Context, name: NameArgument, json_output: JsonFlag = False) -> None:
    """Remove a secret from the OS keyring."""
    from jhansi.cli._output import print_json

    ctx.ensure_object(CliState).json = json_output
    store = _store()
    store.delete(name)
    if json_output:
        print_json({"status": "ok", "removed": name, "backend": store.backend_description()})
    else:
        typer.echo(f"removed {name} ({store.backend_description()})")

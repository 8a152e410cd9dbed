"""``jhansi mcp``: serve jhansi's tools to AI agents over the Model Context Protocol (stdio)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jhansi.cli._state import CliState


def mcp(
    ctx: typer.Context,
    backend: Annotated[str | None, typer.Option("--backend", help="auto, docker or bwrap.")] = None,
    sandbox: Annotated[
        str | None,
        typer.Option(
            "--sandbox",
            metavar="NAME",
            help="The sandbox runs use when a call names none (default: mcp).",
        ),
    ] = None,
    image: Annotated[
        str | None, typer.Option("--image", help="Container image (docker backend).")
    ] = None,
    timeout: Annotated[
        str | None, typer.Option("--timeout", help="Default timeout of a run: seconds, or 5m.")
    ] = None,
    ledger: Annotated[
        Path | None,
        typer.Option("--ledger", metavar="DIR", help="The ledger directory (also JHANSI_LEDGER)."),
    ] = None,
) -> None:
    """Serve jhansi to AI agents over the Model Context Protocol (stdio).

    Tools: run_python, list_sandboxes, read_sandbox_file, verify_ledger, for an MCP
    client (Claude Desktop, Cursor, an agent framework). Settings come from the
    working directory's configuration, as for `jhansi run`; every run goes through
    the same checks, sandbox and ledger. stdout carries the protocol only;
    diagnostics go to stderr.
    """
    from jhansi.cli.run import sandbox_flags
    from jhansi.config import load_settings
    from jhansi.mcp_server import DEFAULT_SANDBOX, AgentTools, serve
    from jhansi.paths import Paths

    ctx.ensure_object(CliState)
    paths = Paths.from_environment()
    settings = load_settings(
        paths=paths,
        flags=sandbox_flags(backend=backend, image=image, timeout=timeout)
        | {("ledger", "path"): str(ledger) if ledger else None},
    )
    tools = AgentTools(settings=settings, paths=paths, default_sandbox=sandbox or DEFAULT_SANDBOX)
    serve(tools)

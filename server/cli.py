"""`fedrad-server`: the coordinator's command line."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(help="Run a fedrad federation's coordinator: TLS certificates, reports.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(stderr=True, soft_wrap=True)  # soft wrap: commands stay copy-pasteable


@app.callback()
def _root() -> None:
    """Run a fedrad federation's coordinator: TLS certificates, reports."""


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code=2)


@app.command()
def certs(
    out: Annotated[Path, typer.Option("--out", help="Folder for ca.crt, ca.key, server.pem, server.key.")],
    host: Annotated[List[str], typer.Option(
        "--host", help="A DNS name or IP address the sites use to reach the SuperLink (repeat for several).")],
    days: Annotated[int, typer.Option("--days", help="Validity of the CA and the server certificate.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files (every site needs the new ca.crt).")]
    = False,
) -> None:
    """Create a private CA and the SuperLink's TLS certificate (localhost, 127.0.0.1 and ::1 included)."""
    from server.certs import CertError, make_certs

    try:
        files = make_certs(out, host, days=days, force=force)
    except (CertError, OSError) as error:
        _fail(str(error))
    _say(f"certificate for {', '.join(files.names)}, valid {days} days, written to {out}:")
    _say(f"  SuperLink:  flower-superlink --ssl-certfile {files.server_cert} --ssl-keyfile {files.server_key} "
         f"--ssl-ca-certfile {files.ca_cert}")
    _say(f"  every site: flower-supernode --root-certificates {files.ca_cert.name} "
         f"(send {files.ca_cert.name} only; it is public)")
    _say(f"  CA fingerprint (SHA-256), for the sites to check by phone: {files.ca_fingerprint}")
    _say(f'  flwr CLI:   root-certificates = "{files.ca_cert}" in the SuperLink connection')
    _say(f"  keep {files.ca_key} offline: it only issues a new server certificate; "
         f"{files.server_key.name} never leaves the SuperLink")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, runs/<run-name>/ (with metrics.jsonl).")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the page (default RUN_DIR/report.html).")]
    = None,
) -> None:
    """Write the run's HTML report: plots per round, tables, failures, settings and the model card."""
    from server.report import write_report
    from server.run_record import RunRecordError

    try:
        path = write_report(run_dir, out)
    except RunRecordError as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"cannot write the report to {out or run_dir}: {error.strerror}: give --out a file in a folder "
              "that exists and that you may write to")
    _say(f"report written to {path} (one self-contained HTML file; open it in a browser, offline)")


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False)  # paths are text, not markup


def main() -> None:
    app()

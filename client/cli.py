"""`fedrad-site`: the site operator's command line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

app = typer.Typer(help="Run a fedrad hospital site: keys, ingest, encrypted store.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
keys_app = typer.Typer(help="The site's keys.", no_args_is_help=True)
store_app = typer.Typer(help="Inspect, verify and export the encrypted site store.", no_args_is_help=True)
ledger_app = typer.Typer(help="The site's privacy ledger.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(store_app, name="store")
app.add_typer(ledger_app, name="ledger")
app_cmd = typer.Typer(help="The app a site runs: its digest, for allowed-hashes in policy.toml.",
                      no_args_is_help=True)
app.add_typer(app_cmd, name="app")
console = Console(stderr=True)

SiteDir = Annotated[Path, typer.Option("--site-dir", help="The site directory (keys/, store/, ledger/, reports/).")]
Passphrase = Annotated[Optional[str], typer.Option(
    "--passphrase-env", help="Derive the key-encryption key with scrypt from the passphrase in this environment variable.")]


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}")  # escape: "[deid] ..." is text, not markup
    raise typer.Exit(code=2)


@app.command()
def synth(
    sites: Annotated[int, typer.Option("--sites", min=1, help="Number of hospitals to write.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder; one site-NNN/ per hospital.")],
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same seed writes identical files.")] = 0,
    patients: Annotated[int, typer.Option("--patients", min=0, help="Patients per site (0: each site's default).")] = 0,
) -> None:
    """Write realistic synthetic hospitals: chest radiograph DICOM plus a labels CSV per site."""
    from common.synth import write_hospitals

    summaries = write_hospitals(out, sites=sites, seed=seed, patients=patients or None)
    for s in summaries:
        console.print(f"{s.out_dir}: {s.images} images of {s.patients} patients, {s.positives} with a finding "
                      f"({s.manufacturer}, {s.modality})")


@keys_app.command("init")
def keys_init(site_dir: SiteDir, passphrase_env: Passphrase = None) -> None:
    """Create the site's key-encryption key (0600) and the site secret for UID remapping."""
    from client.keys import SiteKeyError, init_keys

    try:
        keys = init_keys(site_dir, passphrase_env=passphrase_env)
    except SiteKeyError as error:
        _fail(str(error))
    console.print(f"keys created in {site_dir / 'keys'} (key id {keys.key_id}); back up the key file offline")


@keys_app.command("rotate")
def keys_rotate(
    site_dir: SiteDir,
    passphrase_env: Passphrase = None,
    new_passphrase_env: Annotated[Optional[str], typer.Option(
        "--new-passphrase-env", help="For a passphrase-derived key: the variable holding the new passphrase.")] = None,
) -> None:
    """Re-wrap every data key under a new key-encryption key; the old key opens nothing afterwards."""
    from client.keys import SiteKeyError
    from client.store import StoreError, rotate_site_kek

    try:
        keys = rotate_site_kek(site_dir, passphrase_env=passphrase_env, new_passphrase_env=new_passphrase_env)
    except (SiteKeyError, StoreError) as error:
        _fail(str(error))
    console.print(f"key rotated; new key id {keys.key_id}")


@keys_app.command("node")
def keys_node(
    site_dir: SiteDir,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing node key pair.")] = False,
) -> None:
    """Create the SuperNode's authentication key pair; only node_key.pub goes to the coordinator."""
    from client.node_keys import NodeKeyError, create_node_key

    try:
        pair = create_node_key(site_dir, force=force)
    except (NodeKeyError, OSError) as error:
        _fail(str(error))
    console.print(f"public key:  {escape(str(pair.public_key))}\nfingerprint: {pair.fingerprint}\n"
                  f"send only {pair.public_key.name} to the coordinator (to `flwr supernode register`); "
                  f"{escape(str(pair.private_key))} stays here: flower-supernode --auth-supernode-private-key "
                  f"{escape(str(pair.private_key))}", soft_wrap=True, highlight=False)


@app.command()
def ingest(
    site_dir: SiteDir,
    dicom: Annotated[Path, typer.Option("--dicom", help="A DICOM file or a folder of the export (searched recursively).")],
    labels: Annotated[Path, typer.Option("--labels", help="CSV with columns SOPInstanceUID,finding.")],
    tensor_size: Annotated[int, typer.Option("--tensor-size", min=16, help="Side of the stored training tensors.")] = 128,
    workers: Annotated[int, typer.Option(
        "--workers", min=0, help="Processes that read, de-identify and encrypt files (0: one per CPU; 1: all "
                                 "in this process). This process alone commits them to the store's manifest.")] = 0,
    passphrase_env: Passphrase = None,
) -> None:
    """De-identify, quarantine what cannot be made safe, and encrypt into the site store.

    The de-identification options come from the [deid] table of <site-dir>/policy.toml."""
    from client.deid import DeidConfigError
    from client.deid_policy import deid_settings, describe
    from client.ingest import ingest as run_ingest
    from client.ingest_pool import WorkerDied, available_cpus
    from client.keys import SiteKeyError, load_keys
    from client.labels import LabelsError
    from client.privacy import PolicyError, load_policy
    from client.store import StoreError

    try:
        options, rules = deid_settings(load_policy(site_dir))
        keys = load_keys(site_dir, passphrase_env=passphrase_env)
        console.print(f"de-identification: {describe(options, rules)}")
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("ingesting", total=None)
            summary = run_ingest(site_dir, dicom, labels, keys=keys, options=options, pixel_clean_rules=rules,
                                 tensor_size=tensor_size, workers=workers or available_cpus(),
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (SiteKeyError, StoreError, LabelsError, FileNotFoundError, PolicyError, DeidConfigError,
            WorkerDied) as error:
        _fail(str(error))
    report = summary.to_dict()
    console.print(f"ingested {report['ingested']}, already in store {report['already_in_store']}, "
                  f"quarantined {sum(report['quarantined'].values())}, rejected {sum(report['rejected'].values())} "
                  f"of {report['files']} file(s) in {report['seconds']:.1f} s")
    for kind in ("quarantined", "rejected"):
        for reason, count in report[kind].items():
            console.print(f"  {kind}: {reason}: {count}")
    if summary.labels_without_image:
        _fail(f"{summary.labels_without_image} row(s) of the labels CSV name images that were not found under "
              "--dicom: check the export path or remove those rows")


@store_app.command("info")
def store_info(site_dir: SiteDir, passphrase_env: Passphrase = None) -> None:
    """Counts, sizes and format of the store (no patient data)."""
    store = _open_store(site_dir, passphrase_env)
    typer.echo(json.dumps(store.info(), indent=2, sort_keys=True, default=str))


@store_app.command("verify")
def store_verify(site_dir: SiteDir, passphrase_env: Passphrase = None) -> None:
    """Authenticate every object; list any that fail."""
    problems = _open_store(site_dir, passphrase_env).verify()
    for problem in problems:
        typer.echo(problem)
    if problems:
        _fail(f"{len(problems)} object(s) failed verification")
    typer.echo("every object authenticates")


@store_app.command("export")
def store_export(site_dir: SiteDir, out: Annotated[Path, typer.Option("--out", help="Folder for the clear DICOM.")],
                 passphrase_env: Passphrase = None) -> None:
    """Write the de-identified DICOM in clear, for the site's own audit."""
    count = _open_store(site_dir, passphrase_env).export_dicom(out)
    typer.echo(f"exported {count} de-identified file(s) to {out}")


@ledger_app.command("show")
def ledger_show(
    site_dir: SiteDir,
    as_json: Annotated[bool, typer.Option("--json", help="Every entry and the totals, as JSON.")] = False,
    passphrase_env: Passphrase = None,
) -> None:
    """The site's privacy history and cumulative epsilon (recomputable from the entries)."""
    from client.keys import SiteKeyError, load_keys
    from client.privacy import LedgerError, PolicyError, ledger_report
    from client.round_privacy import dataset_key
    from client.sitedata import training_patients
    from client.store import SiteStore, StoreError

    try:
        keys = load_keys(site_dir, passphrase_env=passphrase_env)
        patients = training_patients(SiteStore.open(site_dir, keys))
        report = ledger_report(site_dir, keys.site_secret, patients=max(patients, 1))
    except (SiteKeyError, StoreError, LedgerError, PolicyError) as error:
        _fail(str(error))
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    mine = report.get("datasets", {}).get(dataset_key(keys.site_secret))
    if not mine:
        typer.echo("no DP-SGD training recorded yet: epsilon 0")
        return
    for entry in mine["entries"]:
        typer.echo(f"run {entry['run_id']} round {entry['server_round']}: noise {entry['noise_multiplier']:.3f}, "
                   f"sample rate {entry['sample_rate']:.4f}, {entry['steps']} steps ({entry['status']})")
    totals = mine["totals"] or {}
    epsilon = "unbounded (non-private training recorded)" if totals.get("epsilon") is None else f"{totals['epsilon']:.3f}"
    typer.echo(f"cumulative epsilon {epsilon} at delta {totals.get('delta', 0):.2e} "
               f"({totals.get('accountant')} accountant), privacy unit: patient, {patients} training patients")


@app_cmd.command("digest")
def app_digest(
    fab: Annotated[Optional[Path], typer.Option("--fab", help="A .fab file (as `flwr build` writes it).")] = None,
    app_dir: Annotated[Optional[Path], typer.Option(
        "--app-dir", help="An installed app: $FLWR_HOME/apps/<publisher>.<name>.<version>.<hash>.")] = None,
) -> None:
    """Print the app digest; list it in policy.toml (allowed-hashes under apps) once the site approves the app.

    Without --fab or --app-dir: this checkout, as `flwr build` would package it."""
    from client.app_digest import AppDigestError, app_digest, fab_digest, installed_app_digest, running_app_root

    if fab is not None and app_dir is not None:
        _fail("give either --fab or --app-dir, not both")
    try:
        if fab is not None:
            digest = fab_digest(fab)
        elif app_dir is not None:
            digest = installed_app_digest(app_dir)
        else:
            digest = app_digest(running_app_root())
    except AppDigestError as error:
        _fail(str(error))
    typer.echo(digest)


def _open_store(site_dir: Path, passphrase_env: Optional[str]):
    from client.keys import SiteKeyError, load_keys
    from client.store import SiteStore, StoreError

    try:
        return SiteStore.open(site_dir, load_keys(site_dir, passphrase_env=passphrase_env))
    except (SiteKeyError, StoreError) as error:
        _fail(str(error))


def main() -> None:
    app()

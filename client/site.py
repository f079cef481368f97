"""Which site this ClientApp serves, from the SuperNode's node config.

A real SuperNode is started with `--node-config "site-dir='/srv/fedrad/site'"`; a
simulated one gets a `partition-id` from Flower and becomes a cached virtual site.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from client.keys import SiteKeys, load_keys
from client.store import SiteStore


class SiteConfigError(ValueError):
    """The SuperNode's node config does not say where the site's data is."""


@dataclass(frozen=True)
class Site:
    name: str
    site_dir: Path
    keys: SiteKeys
    store: SiteStore


def site_label(node_config: Mapping[str, Any]) -> str:
    """The site's public name before its keys are open (for error reports)."""
    if "site-name" in node_config:
        return str(node_config["site-name"])
    if "partition-id" in node_config:
        return f"site-{int(node_config['partition-id']):03d}"
    return "unnamed-site"


def torch_threads(node_config: Mapping[str, Any]) -> int:
    """Torch threads a round trains and evaluates with: the node config's `torch-threads`, default 1
    (sites of a simulation share the machine; a SuperNode on its own machine can use its cores)."""
    value = node_config.get("torch-threads", 1)
    threads = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise SiteConfigError(
            f"the node config's torch-threads must be a whole number >= 1, not {value!r}: set e.g. "
            "torch-threads=4 in --node-config, or leave it out for 1")
    return threads


def resolve_site(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> Site:
    """Open the site's store: `site-dir` from the node config, else a virtual site."""
    if "site-dir" in node_config:
        site_dir = Path(str(node_config["site-dir"])).expanduser()
        if not site_dir.is_dir():
            raise SiteConfigError(
                "the node config's site-dir does not exist: create it with `fedrad-site keys init "
                "--site-dir DIR` and ingest data, or fix the path in --node-config"
            )
        keys = load_keys(site_dir)
        name = str(node_config.get("site-name", f"site-{keys.site_id[:8]}"))
    elif "partition-id" in node_config:
        from client.virtual_site import ensure_virtual_site  # simulation only: synth and ingest

        partition = int(node_config["partition-id"])
        site_dir = ensure_virtual_site(
            Path(str(run_config.get("sim-cache-dir", ".fedrad-cache"))).expanduser(),
            partition_id=partition,
            seed=int(run_config.get("seed", 0)),
            patients=int(run_config.get("sim-patients", 0)),
        )
        keys = load_keys(site_dir)
        name = site_label(node_config)
    else:
        raise SiteConfigError(
            "the SuperNode has no site: start it with --node-config \"site-dir='/path/to/site'\""
        )
    return Site(name=name, site_dir=site_dir, keys=keys, store=SiteStore.open(site_dir, keys))

"""Site policy: the site's own privacy limits and the apps it runs.

Read from ``<site-dir>/policy.toml``; the SuperNode's node config may override single
settings as flat keys (``privacy.max-epsilon = 4.0``, ``apps.allowed-hashes =
"<digest>,<digest>"``, ``deid.<key> = ...``). The run config (the coordinator's) never
can. A missing file means the defaults::

    [privacy]
    max-epsilon = 8.0            # lifetime budget for this site's dataset
    delta = 0.0                  # 0 = automatic: 1 / (10 * patients)
    min-noise-multiplier = 0.5
    max-rounds-per-run = 100     # rounds of one run this site trains in
    allow-non-private = false    # refuse requests with noise_multiplier 0
    [apps]
    allowed-hashes = []          # app digests this site runs (`fedrad-site app digest`)
    allow-any-app = false        # true: run any app (virtual simulation sites only)
    [deid]                       # exposed as a read-only mapping; client.deid interprets it

Apps are secure by default: a site runs an app only if its digest
(:mod:`client.app_digest`: sha256 over the app's files, the same from the ``.fab``
file, the installed app and the checkout it was built from) is listed in
``allowed-hashes``. An empty list allows no app, so a new site declines every round
("app-not-allowed", naming the digest that asked) until its operator reviews the app
and lists its digest. ``allow-any-app = true`` turns the check off; the virtual sites
of a simulation write it, a real site should not. The ClientApp checks its own
digest before it trains or evaluates. This guards against running an unreviewed
version of fedrad's app; it cannot stop a hostile app that omits the check, which
needs the SuperNode to verify the FAB before it runs it (Flower's signed FABs).

Everything is validated once, when loaded; every problem is collected into one
:class:`PolicyError` that names each setting, its rule and the fix.

:meth:`SitePolicy.decide` is what the ClientApp asks before each round. It never
charges the ledger; the caller charges after an accepting decision, before training.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from client.privacy.accounting import PrivacySpent, check_history
from client.privacy.ledger import PrivacyLedger

POLICY_FILE = "policy.toml"
SECTIONS = ("privacy", "apps", "deid")
REASON_KINDS = ("accepted", "privacy-budget", "noise-below-minimum", "too-many-rounds",
                "non-private-refused", "app-not-allowed", "invalid-request")
FAB_HASH_RE = re.compile(r"[0-9a-f]{64}")


class PolicyError(ValueError):
    """The site policy is invalid; ``problems`` lists each one (setting, rule, fix)."""

    def __init__(self, problems: Sequence[str], *, source: str) -> None:
        self.problems = tuple(problems)
        self.source = source
        super().__init__(f"site policy ({source}) has {len(self.problems)} problem(s); the site does not "
                         "train until they are fixed:\n  - " + "\n  - ".join(self.problems))


@dataclass(frozen=True)
class PrivacyRules:
    max_epsilon: float = 8.0
    delta: float = 0.0
    min_noise_multiplier: float = 0.5
    max_rounds_per_run: int = 100
    allow_non_private: bool = False


@dataclass(frozen=True)
class RoundRequest:
    """The work the coordinator asks for in one round (from the message's ConfigRecord)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    run_id: int | str
    server_round: int
    app: str = ""  # the app digest of the requesting app (client.app_digest); "" when unknown


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason_kind: str  # one of REASON_KINDS
    message: str
    projected: PrivacySpent | None = None


# --- settings registry ----------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> float | None:
    return float(value) if _number(value) and value > 0 else None


def _non_negative(value: Any) -> float | None:
    return float(value) if _number(value) and value >= 0 else None


def _delta(value: Any) -> float | None:
    return float(value) if _number(value) and 0 <= value < 1 else None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _boolean(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _hashes(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):  # node config values are scalars: "hash,hash"
        value = [v for v in (p.strip() for p in value.split(",")) if v]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    out = tuple(dict.fromkeys(v.strip().lower() for v in value))
    return out if all(FAB_HASH_RE.fullmatch(v) for v in out) else None


@dataclass(frozen=True)
class _Setting:
    attr: str
    parse: Callable[[Any], Any]
    rule: str
    fix: str


_SETTINGS: dict[str, dict[str, _Setting]] = {
    "privacy": {
        "max-epsilon": _Setting("max_epsilon", _positive, "a finite number > 0 (lifetime epsilon budget)",
                                "set e.g. max-epsilon = 8.0"),
        "delta": _Setting("delta", _delta, "0 (automatic: 1 / (10 * patients)) or a number in (0, 1)",
                          "set delta = 0.0 to let the site choose it"),
        "min-noise-multiplier": _Setting("min_noise_multiplier", _non_negative, "a finite number >= 0",
                                         "set e.g. min-noise-multiplier = 0.5"),
        "max-rounds-per-run": _Setting("max_rounds_per_run", _positive_int, "an integer >= 1",
                                       "set e.g. max-rounds-per-run = 100"),
        "allow-non-private": _Setting("allow_non_private", _boolean, "true or false",
                                      "set allow-non-private = false"),
    },
    "apps": {
        "allowed-hashes": _Setting("allowed_hashes", _hashes,
                                   "a list of app digests (64 hex characters each)",
                                   'set allowed-hashes = ["<digest from `fedrad-site app digest`>"]'),
        "allow-any-app": _Setting("allow_any_app", _boolean, "true or false",
                                  "set allow-any-app = false (true only for simulated sites)"),
    },
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return {str: "a string", list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


# --- the policy -----------------------------------------------------------------------


@dataclass(frozen=True)
class SitePolicy:
    privacy: PrivacyRules = PrivacyRules()
    allowed_hashes: tuple[str, ...] = ()
    allow_any_app: bool = False
    deid: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "defaults"

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], *, source: str = "mapping") -> "SitePolicy":
        """Validate a parsed policy document (``policy.toml``'s tables); collect every problem."""
        problems: list[str] = []
        for section in doc:
            if section not in SECTIONS:
                problems.append(f"[{section}]: unknown section; rule: sections are "
                                f"{', '.join('[' + s + ']' for s in SECTIONS)}; fix: remove or rename it")
        values: dict[str, Any] = {}
        for section, settings in _SETTINGS.items():
            table = doc.get(section, {})
            if not isinstance(table, Mapping):
                problems.append(f"[{section}]: got {_kind(table)}; rule: a table; fix: write it as [{section}]")
                continue
            for key, value in table.items():
                setting = settings.get(key)
                if setting is None:
                    problems.append(f"[{section}] {key}: unknown setting; rule: [{section}] has "
                                    f"{', '.join(settings)}; fix: correct the spelling or remove it")
                    continue
                parsed = setting.parse(value)
                if parsed is None:
                    problems.append(f"[{section}] {key}: got {_kind(value)}; rule: {setting.rule}; "
                                    f"fix: {setting.fix}")
                else:
                    values[setting.attr] = parsed
        deid = doc.get("deid", {})
        if not isinstance(deid, Mapping):
            problems.append(f"[deid]: got {_kind(deid)}; rule: a table; fix: write it as [deid]")
            deid = {}
        if problems:
            raise PolicyError(problems, source=source)
        allowed = values.pop("allowed_hashes", ())
        any_app = values.pop("allow_any_app", False)
        return cls(privacy=replace(PrivacyRules(), **values), allowed_hashes=allowed, allow_any_app=any_app,
                   deid=_freeze(deid), source=source)

    def resolve_delta(self, patients: int) -> float:
        """The delta to account at for a dataset of ``patients`` patients.

        Automatic (``delta = 0``): ``1 / (10 * patients)``. An explicit delta must be
        ``<= 1 / (10 * patients)`` (so in particular below ``1 / patients``, where a
        mechanism that publishes one patient's data would qualify).
        """
        if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
            raise ValueError("patients must be an integer >= 1 (patients in the training split)")
        ceiling = 1.0 / (10 * patients)
        delta = self.privacy.delta
        if delta == 0:
            return ceiling
        if delta > ceiling:
            where = "at or above 1 / patients" if delta >= 1.0 / patients else "above 1 / (10 * patients)"
            raise PolicyError([
                f"[privacy] delta: {delta:g} is {where} for this dataset's {patients} patients; "
                f"rule: delta <= 1 / (10 * patients) = {ceiling:.3g}; fix: set delta = 0.0 (automatic) "
                f"or a value <= {ceiling:.3g}"], source=self.source)
        return delta

    def allows_app(self, app_hash: str) -> bool:
        """Whether the site runs the app with this digest ("" when unknown: only with allow-any-app)."""
        return self.allow_any_app or (isinstance(app_hash, str) and app_hash.lower() in self.allowed_hashes)

    def check_app(self, app_hash: str) -> Decision:
        """Accept or decline running the app whose digest is ``app_hash``."""
        if self.allows_app(app_hash):
            return Decision(True, "accepted", "accepted: " + ("[apps] allow-any-app = true" if self.allow_any_app
                                                              else "the app's digest is in [apps] allowed-hashes"))
        which = f"app {app_hash.lower()}" if FAB_HASH_RE.fullmatch(str(app_hash).lower()) \
            else "an app whose digest is unknown"
        listed = ("the site allows no app yet (an empty [apps] allowed-hashes allows none)"
                  if not self.allowed_hashes else "it is not in the site's [apps] allowed-hashes")
        return Decision(False, "app-not-allowed", f"declined: this site has not approved {which}: {listed}; "
                        "fix (site): review the app, then add its digest to [apps] allowed-hashes in "
                        "policy.toml (`fedrad-site app digest --fab FILE` prints a FAB's digest)")

    def decide(self, request: RoundRequest, ledger: PrivacyLedger, dataset: str, patients: int) -> Decision:
        """Accept or decline one round's requested training on ``dataset``.

        Checked in order: a well-formed request; an allowed app; non-private requests
        (``noise_multiplier == 0``) only with ``allow-non-private``; the noise floor;
        at most ``max-rounds-per-run`` distinct rounds of this run recorded in the
        ledger for this dataset (a retried round counts once); the epsilon of the
        dataset's whole history plus this round at the resolved delta within
        ``max-epsilon``. An accepted non-private request skips the budget check: the
        dataset's epsilon becomes unbounded, and every later private request on it is
        declined for budget.
        """
        try:
            ((sigma, q, steps),) = check_history([(request.noise_multiplier, request.sample_rate, request.steps)])
            if steps < 1 or isinstance(request.server_round, bool) or not isinstance(request.server_round, int) \
                    or request.server_round < 0 or not isinstance(request.app, str) \
                    or not isinstance(request.run_id, (int, str)) or isinstance(request.run_id, bool):
                raise ValueError("steps >= 1, server_round >= 0, run_id an int or string, app a string")
        except ValueError as exc:
            return Decision(False, "invalid-request", f"declined: the round's request is malformed ({exc}); "
                            "fix (coordinator): send noise-multiplier >= 0, sample-rate in (0, 1], steps >= 1")
        rules = self.privacy
        app = self.check_app(request.app)
        if not app.accept:
            return app
        if sigma == 0 and not rules.allow_non_private:
            return Decision(False, "non-private-refused", "declined: non-private training (noise multiplier 0) "
                            "is refused by [privacy] allow-non-private = false; fix (coordinator): request DP "
                            f"training with noise multiplier >= {rules.min_noise_multiplier:g}")
        if 0 < sigma < rules.min_noise_multiplier:
            return Decision(False, "noise-below-minimum", f"declined: noise multiplier {sigma:g} is below the "
                            f"site's [privacy] min-noise-multiplier {rules.min_noise_multiplier:g}; fix "
                            f"(coordinator): request a noise multiplier >= {rules.min_noise_multiplier:g}")
        rounds = {e["server_round"] for e in ledger.entries(dataset) if e["run_id"] == request.run_id}
        if request.server_round not in rounds and len(rounds) >= rules.max_rounds_per_run:
            return Decision(False, "too-many-rounds", f"declined: this site already trained in {len(rounds)} "
                            f"rounds of this run, the limit of [privacy] max-rounds-per-run "
                            f"({rules.max_rounds_per_run}); fix (coordinator): fewer rounds per run")
        delta = self.resolve_delta(patients)
        projected = ledger.projected(dataset, delta, sigma, q, steps)
        if sigma == 0:
            return Decision(True, "accepted", "accepted non-private training ([privacy] allow-non-private = "
                            "true): this dataset's epsilon becomes unbounded", projected)
        if projected.epsilon > rules.max_epsilon:
            spent = ledger.spent(dataset, delta)
            return Decision(False, "privacy-budget", f"declined: after this round the site's epsilon would be "
                            f"{projected.epsilon:.3f} ({projected.accountant}, delta {delta:.3g}), above its "
                            f"[privacy] max-epsilon {rules.max_epsilon:g} (spent so far: {spent.epsilon:.3f}); "
                            "fix (coordinator): more noise, fewer local steps or a lower sample rate; "
                            "(site): a larger max-epsilon in policy.toml", projected)
        return Decision(True, "accepted", f"accepted: epsilon after this round {projected.epsilon:.3f} "
                        f"({projected.accountant}, delta {delta:.3g}) of max-epsilon {rules.max_epsilon:g}",
                        projected)


def load_policy(site_dir: Path, *, node_config: Mapping[str, Any] | None = None) -> SitePolicy:
    """The site's policy: ``<site-dir>/policy.toml`` (defaults if absent) + node-config overrides.

    ``node_config`` is the SuperNode's node config; only its keys ``privacy.*``,
    ``apps.*`` and ``deid.*`` are policy (others, like ``site-dir``, are ignored).
    """
    path = Path(site_dir) / POLICY_FILE
    doc: dict[str, Any] = {}
    source = "defaults"
    if path.exists():
        source = str(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PolicyError([f"{path.name}: not valid TOML ({exc}); fix: correct the syntax"],
                              source=source) from None
    overrides = {k: v for k, v in (node_config or {}).items() if k.split(".", 1)[0] in SECTIONS and "." in k}
    for key, value in overrides.items():
        table = doc
        *parents, leaf = key.split(".")
        for part in parents:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise PolicyError([f"node config {key}: [{part}] is not a table in {POLICY_FILE}; "
                                   "fix: make it a table"], source=source)
        table[leaf] = value
    if overrides:
        source = f"{source} + node config"
    return SitePolicy.from_mapping(doc, source=source)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value

"""Names that explain themselves (issue 12, item 7): two packages of sp share a module name
only when the modules are the same concept seen from two layers (``commands/actions.py``
decides what ``projections/actions.py`` shows, ``cli/action.py`` is its command line), never
for two different things (as ``triggers/plan.py``, schedule slots, once shared "plan" with plan
files). A new shared name must be added here, saying why it is the same concept."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sp"

# name -> why the modules of that name are one concept
SAME_CONCEPT = {
    "action": "the action: its lifecycle machine and its `sp action` commands",
    "actions": "actions: the action types' package, the commands on actions, their read model",
    "agents": "agents: the agent files' package and the commands that apply them",
    "blobs": "blob files: the in-action API, the stored-blob event, the files, the read model",
    "control": "pause/resume control: its commands and its read model",
    "errors": "each package's own errors (ledger: SpError and the ledger's; plans: a plan's)",
    "plan": "a plan: its lifecycle machine and its `sp plan` commands",
    "plans": "plans: the plan files' package, the commands on plans, their read model",
    "retention": "retention: its rules (security), its commands, its `sp gc` command line",
    "rollback": "rollback plans: the command that runs them and their read model",
    "schedules": "schedules: the package of their maths, their commands, their read model",
    "triggers": "triggers: the event sources' package, their commands, their read model",
    "worker": "the worker: the runner's loop and its `sp worker` command",
}


def shared_names() -> dict[str, list[str]]:
    where: dict[str, list[str]] = defaultdict(list)
    for pkg in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        where[pkg.name].append("(package)")
        for module in pkg.glob("*.py"):
            if module.name != "__init__.py":
                where[module.stem].append(pkg.name)
    return {name: pkgs for name, pkgs in where.items() if len(pkgs) > 1}


def test_packages_share_a_module_name_only_for_one_concept() -> None:
    assert sorted(shared_names()) == sorted(SAME_CONCEPT)

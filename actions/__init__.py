"""Built-in action types: what a plan's ``type:`` means.

``shell``, ``modify_files``, ``configure_tooling``, ``clone_template``, ``run_tests``,
``deploy``/``generate_preview``, ``compress``/``decompress``, ``http_request``,
``sqlite_query``, ``install_dependencies``, and custom types (``@action_type``).

Each module registers its types in the registry (:mod:`sp.plans.action_types`, below the
commands that consult it) when it is imported; the registry imports them through the
``sp.action_types`` entry points declared in ``pyproject.toml``. The registry's names are
re-exported here, where types have always imported them from (``from sp.actions import
ActionType, Command, register``), other packages' types included.
"""

from sp.plans.action_types import GROUP as GROUP
from sp.plans.action_types import ActionType as ActionType
from sp.plans.action_types import Command as Command
from sp.plans.action_types import Requirement as Requirement
from sp.plans.action_types import find_program as find_program
from sp.plans.action_types import get as get
from sp.plans.action_types import known as known
from sp.plans.action_types import register as register

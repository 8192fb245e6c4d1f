"""Each trigger's name, defaults included, in one place.

A trigger's fires are recorded on the stream ``trigger:<name>`` and counted under that name by
``sp trigger list``, so the sources and the listing must agree on it. Every kind may set
``name:``; without it:

==========  =====================  ==================================================
kind        file section           default name
==========  =====================  ==================================================
filesystem  triggers.filesystem    ``fs:<path>`` (the path as written)
webhook     triggers.network       the action (``POST /hooks/<action>``)
serial      triggers.hardware      ``serial:<device>``
condition   conditions             its key
continuous  continuous             its key
==========  =====================  ==================================================
"""

from __future__ import annotations

from sp.agents.trigger_file import FileTrigger, SerialTrigger, WebhookTrigger

FILESYSTEM = "filesystem"
WEBHOOK = "webhook"
SERIAL = "serial"
CONDITION = "condition"
CONTINUOUS = "continuous"


def filesystem(t: FileTrigger) -> str:
    return t.name or f"fs:{t.path}"


def webhook(t: WebhookTrigger) -> str:
    return t.name or t.action


def serial(t: SerialTrigger) -> str:
    return t.name or f"serial:{t.device}"

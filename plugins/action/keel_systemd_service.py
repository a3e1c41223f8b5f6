# keel_systemd_service: ansible.builtin.systemd_service that answers a no-op with
# one shell command.
#
# For a task that only asks for a unit to be enabled and/or started, this action
# first asks systemctl on the host (is-enabled, is-active) in one command; when
# the unit already is "enabled" and "active" as asked, it answers "ok" without
# running the systemd_service module (a Python module run, ~0.17 CPU-s on a lab
# container). Any other answer (static, masked, activating, failed, ...) or any
# other option (daemon_reload, restarted, masked, scope, ...) runs the builtin
# module with the task's arguments unchanged. See keel_copy.py.
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'action_utils'))
from keel_fast_path import FastPathAction

_FAST_OPTIONS = frozenset(('name', 'unit', 'enabled', 'state', 'daemon_reload', 'daemon_reexec'))


def probe(name, enabled, state):
    """The command that prints the unit's enabled state and/or active state, a line each."""
    parts = []
    if enabled is not None:
        parts.append(f'systemctl is-enabled -- {shlex.quote(name)}')
    if state is not None:
        parts.append(f'systemctl is-active -- {shlex.quote(name)}')
    return '; '.join(parts) + '; true'


def unchanged(stdout, enabled, state):
    """True when systemctl's answers are what the task asks for."""
    wanted = (['enabled'] if enabled is not None else []) + (['active'] if state is not None else [])
    return to_text(stdout).split() == wanted


class ActionModule(FastPathAction):
    BUILTIN = 'ansible.legacy.systemd_service'

    def _fast_answer(self):
        args = self._task.args
        name = args.get('name', args.get('unit'))
        enabled = args.get('enabled')
        state = args.get('state')
        if (set(args) - _FAST_OPTIONS or not isinstance(name, str)
                or (enabled is None and state is None)
                or (enabled is not None and not boolean(enabled, strict=False))
                or state not in (None, 'started')
                or boolean(args.get('daemon_reload', False), strict=False)
                or boolean(args.get('daemon_reexec', False), strict=False)):
            return None
        answer = self._low_level_execute_command(probe(name, enabled, state), sudoable=True)
        if answer.get('rc') != 0 or not unchanged(answer.get('stdout', ''), enabled, state):
            return None
        result = {'changed': False, 'keel_fast_path': True, 'name': name}
        if enabled is not None:
            result['enabled'] = True
        if state is not None:
            result['state'] = 'started'
        return result

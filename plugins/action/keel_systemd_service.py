# keel_systemd_service: ansible.builtin.systemd_service that answers a no-op with
# one shell command.
#
# For a task that asks for a unit to be enabled or disabled and/or started or
# stopped (with or without daemon_reload), or for a daemon_reload alone, this
# action first asks systemctl on the host in one command (is-enabled, is-active,
# and for daemon_reload whether systemd holds the unit, or any loaded unit, in an
# older version than its files on disk: NeedDaemonReload, and its drop-ins under
# /etc/systemd/system against those it loaded). When the answers
# already are as asked ("enabled"/"disabled", "active"/"inactive" or "failed",
# no reload needed), it answers "ok" without running the systemd_service module
# (a Python module run, ~0.17 CPU-s on a lab container). Any other answer
# (static, masked, activating, a reload needed, ...) or any other option
# (restarted, reloaded, masked, scope, ...) runs the builtin module with the
# task's arguments unchanged. With a unit named, a daemon_reload fast path
# looks at that unit only (a reload other units need is left to their tasks).
# See keel_copy.py.
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'action_utils'))
from keel_fast_path import FastPathAction

_FAST_OPTIONS = frozenset(('name', 'unit', 'enabled', 'state', 'daemon_reload', 'daemon_reexec'))
# what systemctl prints for each wanted setting, when the module would change nothing
_ENABLED = {True: ('enabled',), False: ('disabled',)}
_ACTIVE = {'started': ('active',), 'stopped': ('inactive', 'failed')}
_UNIT_TYPES = frozenset(('service', 'socket', 'timer', 'target', 'mount', 'automount', 'path', 'slice', 'scope',
                         'device', 'swap'))


def _reload_probe(unit):
    """Lines saying whether systemd's loaded state of the unit ('*': every loaded unit) is
    older than its files: NeedDaemonReload, and the drop-ins under /etc/systemd/system it
    loaded against those on disk (systemd 252 does not notice a new drop-in directory)."""
    quoted = shlex.quote(unit)
    full = unit if unit.rpartition('.')[2] in _UNIT_TYPES else unit + '.service'  # as systemctl completes it
    dropins = '/etc/systemd/system/*.d/*.conf' if unit == '*' else f'/etc/systemd/system/{shlex.quote(full)}.d/*.conf'
    return (f"printf 'reload=%s\\n' \"$(systemctl show -p NeedDaemonReload --value -- {quoted} | grep -cx yes)\"; "
            f"printf 'loaded=%s\\n' \"$(systemctl show -p DropInPaths --value -- {quoted} | tr ' ' '\\n' "
            "| grep '^/etc/systemd/system/' | sort -u | tr '\\n' ' ')\"; "
            f"printf 'files=%s\\n' \"$(ls -1d {dropins} 2>/dev/null | sort -u | tr '\\n' ' ')\"")


def probe(name, enabled, state, reload=False):
    """The command that prints, a line each: the unit's enabled state, its active state,
    and for a reload whether it (without a name: any loaded unit) needs one."""
    parts = []
    if name is not None and enabled is not None:
        parts.append(f'systemctl is-enabled -- {shlex.quote(name)}')
    if name is not None and state is not None:
        parts.append(f'systemctl is-active -- {shlex.quote(name)}')
    if reload:
        parts.append(_reload_probe('*' if name is None else name))
    return '; '.join(parts) + '; true'


def unchanged(stdout, enabled, state, reload=False):
    """True when systemctl's answers (probe()) are what the task asks for."""
    lines = to_text(stdout).splitlines()
    wanted = ([_ENABLED[enabled]] if enabled is not None else []) + ([_ACTIVE[state]] if state is not None else [])
    if len(lines) != len(wanted) + (3 if reload else 0):
        return False
    if not all(line.strip() in ok for line, ok in zip(lines, wanted, strict=False)):
        return False
    if not reload:
        return True
    answers = dict(line.strip().partition('=')[::2] for line in lines[len(wanted):])
    return answers.get('reload') == '0' and answers.get('loaded') == answers.get('files')


class ActionModule(FastPathAction):
    BUILTIN = 'ansible.legacy.systemd_service'

    def _fast_answer(self):
        args = self._task.args
        name = args.get('name', args.get('unit'))
        enabled = args.get('enabled')
        state = args.get('state')
        reload = boolean(args.get('daemon_reload', False), strict=False)
        if enabled is not None:
            enabled = boolean(enabled, strict=False)
        if (set(args) - _FAST_OPTIONS or not isinstance(name, (str, type(None)))
                or (name is None and (not reload or enabled is not None or state is not None))
                or (name is not None and enabled is None and state is None)
                or state not in (None, 'started', 'stopped')
                or boolean(args.get('daemon_reexec', False), strict=False)):
            return None
        answer = self._low_level_execute_command(probe(name, enabled, state, reload), sudoable=True)
        if answer.get('rc') != 0 or not unchanged(answer.get('stdout', ''), enabled, state, reload):
            return None
        result = {'changed': False, 'keel_fast_path': True}
        if name is not None:
            result['name'] = name
        if enabled is not None:
            result['enabled'] = enabled
        if state is not None:
            result['state'] = state
        return result

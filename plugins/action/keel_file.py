# keel_file: ansible.builtin.file that answers a no-op with one shell command.
#
# For a directory, an existing file, an absent path or a symbolic link, this action first asks the
# host for the path's type, owner, group and mode (GNU stat, readlink) in one
# command; when they already are what the task asks for it answers "ok" without
# running the file module (a Python module run, ~0.17 CPU-s on a lab container).
# In every other case, or for an option this fast path does not compare, it runs
# ansible.builtin.file with the task's arguments unchanged. See keel_copy.py.
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'action_utils'))
from keel_fast_path import FastPathAction, attributes_match, wanted_mode

_FAST_OPTIONS = frozenset(('path', 'dest', 'name', 'state', 'owner', 'group', 'mode', 'src', 'recurse', 'follow',
                           'force'))
_STAT_FORMAT = '%F|%a|%u|%g|%U|%G'


def matches(fields, owner, group, mode):
    """True when stat's 'type|mode|uid|gid|user|group' fields have the owner, group and mode asked for."""
    _, octal, uid, gid, user, grp = fields
    return attributes_match({'mode': int(octal, 8), 'uid': uid, 'gid': gid, 'owner': user, 'group': grp},
                            owner, group, mode)


def unchanged(state, stdout, owner, group, mode, src=None):
    """True when the output of the command _probe() built shows the path as the task wants it."""
    lines = to_text(stdout).splitlines()
    if state == 'absent':
        return lines == ['absent']
    if not lines:
        return False
    fields = lines[0].split('|')
    if len(fields) != 6:
        return False
    if state == 'directory':
        return fields[0] == 'directory' and matches(fields, owner, group, mode)
    if state == 'file':
        return fields[0] in ('regular file', 'regular empty file') and matches(fields, owner, group, mode)
    if state == 'link':
        return fields[0] == 'symbolic link' and lines[1:] == [src]
    return False


def _probe(state, path):
    quoted = shlex.quote(path)
    if state == 'absent':
        return f'if [ -e {quoted} ] || [ -L {quoted} ]; then echo present; else echo absent; fi'
    command = f'stat -c {shlex.quote(_STAT_FORMAT)} -- {quoted}'
    # A link also needs its target: the module refuses a link to nothing unless forced.
    return command + (f' && readlink -- {quoted} && test -e {quoted}' if state == 'link' else '')


class ActionModule(FastPathAction):
    BUILTIN = 'ansible.legacy.file'

    def _fast_answer(self):
        args = self._task.args
        path = args.get('path', args.get('dest', args.get('name')))
        # Without a state the module keeps the path's own: 'file' for an existing file.
        state = args.get('state', 'file')
        mode = wanted_mode(args.get('mode'))
        if (set(args) - _FAST_OPTIONS or not isinstance(path, str)
                or state not in ('directory', 'file', 'absent', 'link')
                or mode is False or boolean(args.get('recurse', False), strict=False)
                or (state == 'link' and (args.get('owner') is not None or args.get('group') is not None
                                         or mode is not None or not isinstance(args.get('src'), str)))):
            return None
        answer = self._low_level_execute_command(_probe(state, path), sudoable=True)
        if answer.get('rc') != 0 or not unchanged(state, answer.get('stdout', ''), args.get('owner'),
                                                   args.get('group'), mode, args.get('src')):
            return None
        result = {'changed': False, 'keel_fast_path': True, 'path': path, 'state': state}
        if state == 'link':
            result.update(dest=path, src=args['src'])
        return result

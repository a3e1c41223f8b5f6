# keel_copy: ansible.builtin.copy that answers a no-op with one shell command.
#
# The builtin copy action, when the destination already holds the content, still
# makes a temporary directory on the host, runs the stat module (with checksum),
# runs the file module for owner, group and mode, and removes the directory: four
# commands, two of them Python module runs (~0.17 CPU-s each on a lab container).
# This action first asks the host for the file's type, owner, group, mode and
# SHA-1 in one command (GNU stat and sha1sum); when all of them are already what
# the task asks for, it answers "ok" at once. In every other case (the file is
# missing, differs, is a link or a directory, the host has no GNU coreutils, or
# the task uses an option this fast path does not compare) it runs the builtin
# copy action unchanged: same arguments, same checks, same validate, backup,
# check mode and diff. Measured on the lab: docs/benchmarks/README.md (no-op).
from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path

from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action.copy import ActionModule as CopyAction

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'action_utils'))
from keel_fast_path import attributes_match, enabled, wanted_mode

# Options the fast path understands; any other option sends the task to the builtin.
# validate, backup and unsafe_writes only act when the file is written, which the fast path
# never does.
_FAST_OPTIONS = frozenset(('src', 'content', 'dest', 'owner', 'group', 'mode', 'validate', 'backup',
                           'follow', 'force', 'remote_src', 'decrypt', 'local_follow', 'unsafe_writes'))
_STAT_FORMAT = '%F|%a|%u|%g|%U|%G|%s'


def parse_state(stdout):
    """The state the remote 'stat; sha1sum' command reported, or None when it is not a plain file."""
    lines = to_text(stdout).strip().splitlines()
    if len(lines) != 2:
        return None
    fields = lines[0].split('|')
    if len(fields) != 7 or fields[0] not in ('regular file', 'regular empty file'):
        return None
    return {
        'mode': int(fields[1], 8), 'uid': fields[2], 'gid': fields[3], 'owner': fields[4], 'group': fields[5],
        'size': int(fields[6]), 'checksum': lines[1].split(' ', 1)[0],
    }


def unchanged(state, content, owner, group, mode):
    """True when the file the host reported already is what the task asks for."""
    if state is None or state['checksum'] != hashlib.sha1(content, usedforsecurity=False).hexdigest():
        return False
    return attributes_match(state, owner, group, mode)


class ActionModule(CopyAction):
    # The temporary directory is made only when the builtin path writes a file.
    TRANSFERS_FILES = False

    def _fast_content(self):
        """The bytes the task would write, or None when the fast path cannot know them."""
        args = self._task.args
        if args.get('content') is not None:
            content = args['content']
            return to_bytes(content) if isinstance(content, str) else None
        try:
            source = self._find_needle('files', args['src'])
        except Exception:  # the builtin reports a missing source its own way
            return None
        try:
            with open(source, 'rb') as f:
                data = f.read()
        except (IsADirectoryError, OSError):
            return None
        return None if data.startswith(b'$ANSIBLE_VAULT') else data

    def _fast_answer(self):
        if not enabled():
            return None
        args = self._task.args
        dest = args.get('dest')
        if (set(args) - _FAST_OPTIONS or not dest or dest.endswith('/')
                or (args.get('src') is None) == (args.get('content') is None)
                or boolean(args.get('remote_src', False), strict=False)
                or boolean(args.get('follow', False), strict=False)
                or not boolean(args.get('force', True), strict=False)):
            return None
        mode = wanted_mode(args.get('mode'))
        if mode is False:
            return None
        content = self._fast_content()
        if content is None:
            return None
        quoted = shlex.quote(dest)
        command = f'stat -c {shlex.quote(_STAT_FORMAT)} -- {quoted} && sha1sum -- {quoted}'
        answer = self._low_level_execute_command(command, sudoable=True)
        if answer.get('rc') != 0:
            return None
        state = parse_state(answer.get('stdout', ''))
        if not unchanged(state, content, args.get('owner'), args.get('group'), mode):
            return None
        return {
            'changed': False, 'keel_fast_path': True, 'dest': dest, 'path': dest, 'state': 'file',
            'checksum': state['checksum'], 'mode': f"0{state['mode']:03o}", 'owner': state['owner'],
            'group': state['group'], 'uid': int(state['uid']), 'gid': int(state['gid']), 'size': state['size'],
        }

    def run(self, tmp=None, task_vars=None):
        answer = self._fast_answer()
        if answer is not None:
            return answer
        if self._connection._shell.tmpdir is None:
            self._make_tmp_path()
        return super().run(tmp, task_vars)

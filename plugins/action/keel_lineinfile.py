# keel_lineinfile: ansible.builtin.lineinfile that answers a no-op with one shell command.
#
# For a task that puts a line in place of the last line its regexp matches (the
# module's default), this action reads the file with one command (base64, so that
# an SSH terminal cannot change its line ends) and
# looks for that line the way the module does (the last line the regexp matches,
# else a line equal to 'line'); when that line already reads 'line' it answers
# "ok" without running the lineinfile module (a Python module run, ~0.17 CPU-s on
# a lab container). Any other case (no such line, the file is missing, backrefs,
# search_string, firstmatch, state=absent, owner/group/mode) runs the builtin
# module with the task's arguments unchanged. See keel_copy.py.
from __future__ import annotations

import base64
import binascii
import re
import shlex
import sys
from pathlib import Path

from ansible.module_utils.common.text.converters import to_bytes, to_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'action_utils'))
from keel_fast_path import FastPathAction

# insertafter/insertbefore/create only act when no line matches, and validate and
# backup only when the file is written: the fast path answers neither case.
_FAST_OPTIONS = frozenset(('path', 'dest', 'name', 'regexp', 'line', 'state', 'insertafter', 'insertbefore',
                           'create', 'validate', 'backup'))


def unchanged(content, regexp, line):
    """True when lineinfile would find 'line' already in place in the bytes 'content'."""
    lines = content.splitlines(keepends=True)
    wanted = to_bytes(line, errors='surrogate_or_strict')
    index = -1
    if regexp is not None:
        pattern = re.compile(to_bytes(regexp, errors='surrogate_or_strict'))
        index = max((n for n, current in enumerate(lines) if pattern.search(current)), default=-1)
    if index == -1:
        index = max((n for n, current in enumerate(lines) if current.rstrip(b'\r\n') == wanted), default=-1)
    if not wanted.endswith(b'\n'):
        wanted += b'\n'
    return index != -1 and lines[index] == wanted


class ActionModule(FastPathAction):
    BUILTIN = 'ansible.legacy.lineinfile'

    def _fast_answer(self):
        args = self._task.args
        path = args.get('path', args.get('dest', args.get('name')))
        if (set(args) - _FAST_OPTIONS or not isinstance(path, str) or not isinstance(args.get('line'), str)
                or args.get('state', 'present') != 'present'
                or not isinstance(args.get('regexp', ''), str)):
            return None
        answer = self._low_level_execute_command(f'base64 -w 0 -- {shlex.quote(path)}', sudoable=True)
        if answer.get('rc') != 0:
            return None
        try:
            content = base64.b64decode(to_text(answer.get('stdout', '')).strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        if not unchanged(content, args.get('regexp'), args['line']):
            return None
        return {'changed': False, 'keel_fast_path': True, 'msg': '', 'backup': ''}

"""What the keel_* action plugins share (plugins/action; docs/fast-actions.md).

Not a plugin itself: the actions put this directory on sys.path and import it.
"""

from __future__ import annotations

import os
import re

from ansible.plugins.action import ActionBase

_OCTAL_MODE = re.compile(r'^0?[0-7]{3,4}$')


def enabled():
    """False when KEEL_FAST_PATH=0 asks for the builtins only (for comparison or debugging)."""
    return os.environ.get('KEEL_FAST_PATH', '1') != '0'


def wanted_mode(mode):
    """The mode as an int when it is numeric (0644, '0644', '644', 420); False for symbolic modes."""
    if mode is None or isinstance(mode, int):
        return mode
    mode = str(mode)
    return int(mode, 8) if _OCTAL_MODE.match(mode) else False


def attributes_match(actual, owner, group, mode):
    """True when a path's actual {'owner', 'uid', 'group', 'gid', 'mode' (int)} has the owner
    (name or id), group (name or id) and mode (wanted_mode()) the task asks for; None is not asked."""
    if owner is not None and str(owner) not in (actual['owner'], actual['uid']):
        return False
    if group is not None and str(group) not in (actual['group'], actual['gid']):
        return False
    return mode is None or mode == actual['mode']


class FastPathAction(ActionBase):
    """Answer from _fast_answer() when it can, else run the builtin module BUILTIN with the task's arguments."""

    _supports_check_mode = True
    BUILTIN = ''

    def _fast_answer(self):
        """The result when the host already is as the task asks, else None."""
        raise NotImplementedError

    def run(self, tmp=None, task_vars=None):
        answer = self._fast_answer() if enabled() else None
        if answer is not None:
            return answer
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name=self.BUILTIN, module_args=self._task.args,
                                           task_vars=task_vars))
        self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

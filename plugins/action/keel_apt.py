# keel_apt: ansible.builtin.apt that answers a no-op with one shell command.
#
# The apt module opens APT's whole package cache even when every package already
# is as asked (~0.7 CPU-s per run on a lab container). For a task that names
# plain packages to be present or absent, this action first asks dpkg-query for
# their status, and the host for the age of APT's indexes, in one command; when
# every package already is installed (present) or not installed (absent; with purge
# no configuration files left either) and the
# indexes are younger than cache_valid_time (when the task updates the cache),
# it answers "ok" without running the module. Any other case (a version, a
# wildcard, a .deb, a virtual package, an upgrade, autoremove, a cache the
# module would update) runs ansible.builtin.apt with the task's arguments
# unchanged. See keel_copy.py.
#
# One thing it adds to the module, for every task that updates the cache: a
# host with no downloaded package indexes (a fresh image: an empty but recent
# /var/lib/apt/lists, which the module's cache_valid_time would trust) gets
# them whatever cache_valid_time says, and in check mode they are downloaded for
# real first (a cache, not the host's configuration), so that a dry run on a
# fresh host can tell what apt would install.
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'action_utils'))
from keel_fast_path import FastPathAction

_FAST_OPTIONS = frozenset(('name', 'pkg', 'package', 'state', 'update_cache', 'cache_valid_time', 'lock_timeout',
                           'install_recommends', 'purge'))
_PLAIN_NAME = re.compile(r'^[a-z0-9][a-z0-9+.-]+$')
# The module's own evidence of the last index update (modules/apt.py, get_updated_cache_time).
_CACHE_TIME = ('stat -c %Y /var/lib/apt/periodic/update-success-stamp 2>/dev/null'
               ' || stat -c %Y /var/lib/apt/lists')
# How many package indexes the host has downloaded (0 on a fresh image).
_INDEX_COUNT = 'ls /var/lib/apt/lists 2>/dev/null | grep -c _Packages; true'


def packages(args):
    """The plain package names the task names, or None when one is not a plain name."""
    names = args.get('name', args.get('pkg', args.get('package')))
    if isinstance(names, str):
        names = [n.strip() for n in names.split(',')]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and _PLAIN_NAME.match(n) for n in names):
        return None
    return names


def probe(names):
    status_format = shlex.quote('${Package}\\t${Status}\\n')
    quoted = ' '.join(shlex.quote(n) for n in names)
    return f'date +%s; {_CACHE_TIME}; dpkg-query -W -f={status_format} -- {quoted} 2>/dev/null; true'


def unchanged(stdout, names, state, cache_valid_time, purge=False):
    """True when the probe's output shows every package as asked and, if asked, a fresh cache."""
    lines = to_text(stdout).splitlines()
    if len(lines) < 2 or not lines[0].isdigit() or not lines[1].isdigit():
        return False
    if cache_valid_time is not None and int(lines[0]) - int(lines[1]) > cache_valid_time:
        return False
    states = {}  # dpkg's last status word: installed, config-files, not-installed, half-installed, ...
    for line in lines[2:]:
        package, _, status = line.partition('\t')
        states.setdefault(package, set()).update(status.split()[-1:])
    if state == 'present':
        return all('installed' in states.get(n, ()) for n in names)
    gone = {'not-installed'} if purge else {'not-installed', 'config-files'}
    return all(states.get(n, set()) <= gone for n in names)


def updates_cache(args):
    """Whether the module would update the indexes: update_cache, or a cache_valid_time (as modules/apt.py)."""
    return boolean(args.get('update_cache', False), strict=False) or bool(args.get('cache_valid_time'))


def fresh_host_args(args):
    """The task's arguments for a host without indexes: the module updates them, whatever their age."""
    return dict(args, update_cache=True, cache_valid_time=0)


def index_count(stdout):
    """The number _INDEX_COUNT printed; None when the output is not one."""
    text = to_text(stdout).strip()
    return int(text) if text.isdigit() else None


class ActionModule(FastPathAction):
    BUILTIN = 'ansible.legacy.apt'

    def run(self, tmp=None, task_vars=None):
        args = self._task.args
        if updates_cache(args):
            answer = self._low_level_execute_command(_INDEX_COUNT, sudoable=True)
            if index_count(answer.get('stdout', '')) == 0:
                self._task.args = fresh_host_args(args)
                if self._task.check_mode:
                    fetched = self._fetch_indexes(task_vars)
                    if fetched.get('failed'):
                        return fetched
        return super().run(tmp, task_vars)

    def _fetch_indexes(self, task_vars):
        """apt-get update for real, in check mode too (the module alone would only pretend)."""
        check_mode = self._task.check_mode
        self._task.check_mode = False
        try:
            result = self._execute_module(
                module_name=self.BUILTIN, task_vars=task_vars,
                module_args={'update_cache': True, 'lock_timeout': self._task.args.get('lock_timeout', 60)})
        finally:
            self._task.check_mode = check_mode
        if result.get('failed'):
            result['msg'] = f"downloading the package indexes for a dry run failed: {result.get('msg', '')}"
        return result

    def _fast_answer(self):
        args = self._task.args
        state = args.get('state', 'present')
        names = packages(args)
        if set(args) - _FAST_OPTIONS or names is None or state not in ('present', 'absent'):
            return None
        cache_valid_time = None
        if updates_cache(args):
            try:
                cache_valid_time = int(args.get('cache_valid_time', 0))
            except (TypeError, ValueError):
                return None
            if cache_valid_time <= 0:
                return None  # the module updates the indexes on every run
        answer = self._low_level_execute_command(probe(names), sudoable=True)
        if answer.get('rc') != 0 or not unchanged(answer.get('stdout', ''), names, state, cache_valid_time,
                                                   boolean(args.get('purge', False), strict=False)):
            return None
        return {'changed': False, 'keel_fast_path': True, 'cache_updated': False}

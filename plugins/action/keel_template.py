# keel_template: ansible.builtin.template that answers a no-op with one shell command.
#
# The builtin template action renders the template on the controller and hands
# the result to the copy action. This one renders it the same way (it is the
# builtin action) and hands it to keel_copy instead, which compares the rendered
# content, owner, group and mode with the host's file in one command and runs
# the builtin copy only when something differs (see keel_copy.py).
from __future__ import annotations

from ansible.plugins.action.template import ActionModule as TemplateAction


class _ActionLoaderWithFastCopy:
    """The action loader, except that the builtin copy is replaced by keel_copy."""

    def __init__(self, loader):
        self._loader = loader

    def get(self, name, *args, **kwargs):
        if name in ('ansible.legacy.copy', 'ansible.builtin.copy', 'copy'):
            name = 'ansible.legacy.keel_copy'
        return self._loader.get(name, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _SharedLoaders:
    """The shared plugin loaders with _ActionLoaderWithFastCopy as the action loader."""

    def __init__(self, shared):
        self._shared = shared
        self.action_loader = _ActionLoaderWithFastCopy(shared.action_loader)

    def __getattr__(self, name):
        return getattr(self._shared, name)


class ActionModule(TemplateAction):
    # keel_copy makes the temporary directory when it has a file to write.
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        self._shared_loader_obj = _SharedLoaders(self._shared_loader_obj)
        return super().run(tmp, task_vars)

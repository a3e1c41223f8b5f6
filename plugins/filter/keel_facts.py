"""Facts keel's roles read the same way everywhere.

keel_in_container: true when the gathered facts say the host is a container
(it shares the kernel of the machine it runs on): kernel settings, mounts, the
clock and systemd's kernel-level sandboxing are then the machine's, not the
host's. One definition for every role, unit template and playbook.

    {{ ansible_facts | keel_in_container }}
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

# virtualization_type values Ansible's fact gathering reports for containers
CONTAINER_TYPES = frozenset({"docker", "container", "podman", "lxc", "containerd", "systemd-nspawn"})


def keel_in_container(facts) -> bool:
    if not isinstance(facts, dict):
        raise AnsibleFilterError(f"keel_in_container expects ansible_facts (a dict), got {type(facts).__name__}")
    return facts.get("virtualization_role") == "guest" and facts.get("virtualization_type") in CONTAINER_TYPES


class FilterModule:
    def filters(self):
        return {"keel_in_container": keel_in_container}

"""Shared by the unit tests (imported by name: tests/unit is on sys.path while they
run; not named conftest, which tests/unit/app has too)."""

# The roles read the architecture from ansible_facts (ansible.cfg turns off the
# facts as top-level variables). Tests whose hosts are not contacted (gather_facts
# off) give each host its inventory variable test_arch as that fact: a cacheable
# set_fact lands in ansible_facts (run them with ANSIBLE_CACHE_PLUGIN=memory).
FAKE_ARCHITECTURE = {"name": "Give the host its test architecture as a fact",
                     "ansible.builtin.set_fact": {"ansible_architecture": "{{ test_arch }}", "cacheable": True}}

"""su on a pseudo-terminal, for the hardening tests: python3 - TARGET PASSWORD.

Runs `su -c 'id -un' TARGET` and types PASSWORD once su's prompt is there: su reads
the password from its terminal and flushes what was typed before its prompt. Prints
what su printed; exits with su's status. Standard library only (it runs on the host
under test).
"""
import os
import pty
import sys
import time

pid, fd = pty.fork()
if pid == 0:
    os.execvp("su", ["su", "-c", "id -un", sys.argv[1]])  # noqa: S606  su itself is under test
seen, deadline = b"", time.monotonic() + 60
while b"assword" not in seen and time.monotonic() < deadline:
    seen += os.read(fd, 1024)
time.sleep(0.3)
os.write(fd, sys.argv[2].encode() + b"\n")
out = b""
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

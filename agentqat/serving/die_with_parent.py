"""Runs a command that the kernel ends (SIGTERM) when the process that started it dies, even by SIGKILL.

    python -m agentqat.serving.die_with_parent PARENT_PID COMMAND [ARG...]

A managed vLLM server runs in its own process group (so that `stop()` reaches its engine processes), which
also keeps it alive after its owner is killed with SIGKILL: an orphan holding a core and gigabytes that a
resumed run would compete with. This wrapper sets Linux's parent-death signal (prctl PR_SET_PDEATHSIG) and
then execs the command, which keeps the setting: vLLM's API server gets SIGTERM and shuts its engine down.
The signal follows the thread that started the process, so start servers from a thread that lives as long
as they should (the main thread). Elsewhere than on Linux it only runs the command.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    """Execs `argv[1:]` with the parent-death signal set; exits 1 at once if the parent (pid `argv[0]`) is gone."""
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the prctl, so no signal will come
            sys.exit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])

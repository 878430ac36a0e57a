"""The bad-input tables' runner: every case is ``rtdet.cli.main(argv)`` in a forked child of one warm driver
process (rtdet imported once), its stdout / stderr in ``<out>/<i>.out`` / ``<i>.err``.

An exception escaping ``main()`` prints its traceback and exits 1, as the interpreter would; SIGINT and SIGTERM
act as in a terminal, however pytest was started (a suite started with SIGINT ignored must not change a case).
``before`` (one per case, or None) runs in the child first: the fault a case injects.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable


def run_forked(cases: list[list[str]], out: str, before: list[Callable[[], None] | None] | None = None) -> list[int]:
    """The exit status of each case, in order."""
    import rtdet.cli

    codes = []
    for i, argv in enumerate(cases):
        pid = os.fork()
        if pid == 0:
            for fd, name in ((1, "out"), (2, "err")):
                os.dup2(os.open(f"{out}/{i}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                if before is not None and before[i] is not None:
                    before[i]()
                code = rtdet.cli.main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    return codes

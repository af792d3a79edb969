"""How every script ends: a bad constant -> one line and exit status 2; a diverged loss or
a failed worker -> its message and exit status 1; Ctrl-C -> 130."""
from __future__ import annotations

import sys
import traceback

from .cli import UsageError


def run(main, argv=None):
    """Run a script's main(argv) and turn its errors into exit statuses."""
    from harness.launch import WorkerFailed, prepare_process
    from models.training import DivergenceError

    try:
        prepare_process()
        main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except DivergenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except WorkerFailed as exc:
        print(f"error: a worker process failed; the run was stopped.\n{exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        sys.exit(1)

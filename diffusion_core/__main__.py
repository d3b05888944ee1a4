import sys

from .threads import apply_thread_policy

apply_thread_policy()  # before .cli imports torch (OpenMP reads it once, at load)

from .cli import main  # noqa: E402

sys.exit(main())

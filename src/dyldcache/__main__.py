"""``python -m dyldcache``: the command line (dyldcache.cli)."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # a Ctrl-C while Python is still loading the program
    sys.stderr.write("dyldcache: interrupted\n")
    sys.exit(130)

sys.exit(main())

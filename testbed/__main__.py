"""`python -m testbed ...` = the `testbed` command."""

from testbed.cli import main

raise SystemExit(main())

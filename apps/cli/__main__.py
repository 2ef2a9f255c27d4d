"""`python -m apps.cli` runs the same client as the `skyport` command."""

from apps.cli.main import main

raise SystemExit(main())

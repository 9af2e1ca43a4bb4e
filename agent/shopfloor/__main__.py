from shopfloor.cli import main

raise SystemExit(main())

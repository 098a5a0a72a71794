from cwcompose.cli import main

raise SystemExit(main())

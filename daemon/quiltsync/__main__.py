from quiltsync.cli.main import main

raise SystemExit(main())

from quiltsync.cli import main

raise SystemExit(main())

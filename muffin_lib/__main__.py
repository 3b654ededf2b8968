from muffin_lib.cli import main

raise SystemExit(main())

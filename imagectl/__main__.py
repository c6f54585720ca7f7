from imagectl.cli import main

raise SystemExit(main())

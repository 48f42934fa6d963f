from jukebox_lite.cli import main

raise SystemExit(main())

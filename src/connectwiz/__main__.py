from connectwiz.cli import main

raise SystemExit(main())

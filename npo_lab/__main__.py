from npo_lab.cli import main

raise SystemExit(main())

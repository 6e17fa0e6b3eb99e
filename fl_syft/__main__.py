from fl_syft.cli import main

raise SystemExit(main())

import sys

if sys.argv[1:] == ["__refill-key-reserve"]:
    # The key reserve's refill, started by crate itself in the background.
    from crate_cli.client.keyreserve import main

    main()
else:
    from crate_cli.cli import main

    main()

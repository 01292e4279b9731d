from crate_cli.cli import main

main()

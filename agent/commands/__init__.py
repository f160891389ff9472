"""CLI subcommands: each module here with a `register(subparsers)` function is one, listed in `agent.cli.COMMANDS`
(the CLI imports only the module of the command it runs; a test checks the table names every such module)."""

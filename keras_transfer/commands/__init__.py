"""The `keras-transfer` subcommands that need more than a few lines, one module each: `build_parser()` and
`run(args) -> exit code`. `cli.COMMANDS` is the table that names them all."""

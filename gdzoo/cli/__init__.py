"""The ``gdzoo`` command line: one module per subcommand, wired in :mod:`gdzoo.cli.main`."""

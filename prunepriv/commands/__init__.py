"""What each ``prunepriv`` subcommand does, callable from Python: the CLI only parses and prints."""

"""The `radlake` command line: thin commands over the library."""

"""The `lc` command: argument parsing only; each command calls one library function."""

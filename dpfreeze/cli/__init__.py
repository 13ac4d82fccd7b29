"""The command line: thin front ends over the library below (nothing below imports them)."""

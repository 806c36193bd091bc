"""`photobg generate`: its arguments and `run` (`cli`), planning the outputs (`plan`) and running them
(`run`). Importing the package imports nothing else, so `photobg --help` stays instant."""

from dreamperp.cli import entry

entry()

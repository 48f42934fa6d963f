"""One module per `jukebox-lite` command: arguments, paths from the run folder, then an algorithm."""

"""jukebox-lite: teach a Jukebox-style hierarchical music model one genre."""

__version__ = "0.1.0"

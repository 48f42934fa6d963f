"""What every layer may use: errors, atomic files, audio I/O, recipe config, checkpoint files, devices."""

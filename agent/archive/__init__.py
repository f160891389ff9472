"""WAV archive, repair after a crash, and the upload queue."""

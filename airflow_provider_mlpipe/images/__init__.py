"""Container entrypoints, mapped from the repository's training_image/ and serving_image/ folders."""

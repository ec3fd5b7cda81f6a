"""The inbox watcher: finds completely written files, records them, enqueues them. It never
decodes an image; hashing is its only work per file."""

"""Image decoding shared by the roles that read the inbox's files (the worker, the web app)."""

"""The OpenAI fine-tuning API on premises: files, jobs, events and checkpoints in SQLite, run by a worker."""

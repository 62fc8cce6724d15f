"""Model selection before training: predicted memory, speed and time per candidate model and method."""

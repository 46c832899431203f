"""The path to a shipped file: export a trial, build and verify its package, and the predict example it carries."""

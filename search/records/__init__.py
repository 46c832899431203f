"""What a study keeps, and where: its storage, its fingerprint, the config it was searched with, masked passwords."""

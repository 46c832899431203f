"""What the search learns before it samples: the sensitivity profile, the space it narrows and the seed plans it draws."""

"""Small helpers with no project imports: atomic file writes, JSON Lines, quieting third-party noise.

May import: nothing from common."""

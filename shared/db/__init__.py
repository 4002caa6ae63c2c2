"""PostgreSQL access: the lazy pool, versioned migrations and the file_keys repository."""

from shared.db.file_keys import FileKeyRepository, KeyRow
from shared.db.migrations import MIGRATIONS, Migration, apply_migrations, migrate
from shared.db.pool import Database

__all__ = ["MIGRATIONS", "Database", "FileKeyRepository", "KeyRow", "Migration", "apply_migrations", "migrate"]

"""PostgreSQL adapter: one LOGIN role and one schema it owns per student, on the learning DB.

Isolation model. Every student role is a member of one NOLOGIN group role
(`onramp_students`) that alone holds CONNECT and TEMPORARY on the learning database; PUBLIC
loses every privilege on that database and on its `public` schema (once per adapter, under
a database-wide advisory lock). A student's schema is owned by the student's role and grants
nothing to PUBLIC, so a student can neither read another student's schema nor create
objects in `public`. Roles are cluster-wide: other databases of the same cluster that still
grant CONNECT to PUBLIC are reachable by students, so give the learning database its own
cluster (or a pg_hba rule for `+onramp_students`).

Passwords. A provision always sets a fresh password and returns it: the caller stores only
the latest secret, and a retried activity must not hand back a password that no longer
works. The password is sent as a SCRAM verifier computed client-side, so the plaintext
never appears in server statement logs. Two concurrent provisions of the same student are
serialised by an advisory lock; the one that commits last owns the valid password.
"""

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from core.tools.base import (
    Held,
    Progress,
    ToolAccount,
    ToolError,
    ToolPermanentError,
    ToolStatus,
    ToolSubject,
    ToolTransientError,
    no_progress,
)
from core.tracks import TOOL_POSTGRES

logger = logging.getLogger(__name__)

STUDENT_GROUP_ROLE = "onramp_students"
SUPERSET_ROLE_SUFFIX = "_superset"
SUPERSET_CONNECTION_LIMIT = 3

# SQLSTATE classes worth retrying: connection exceptions, transaction rollback
# (serialization failure, deadlock), insufficient resources (too many connections),
# object not in prerequisite state (lock not available), operator intervention (shutdown),
# system errors.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})
# XX000 is what concurrent catalog updates ("tuple concurrently updated") raise.
TRANSIENT_SQLSTATES = frozenset({"XX000"})


def role_name(username: str) -> str:
    """The student's role and schema name; stable because usernames are."""
    return f"student_{username}"


def classify(exc: psycopg.Error) -> ToolError:
    """Map a psycopg error to a tool error whose message carries no DSN and no secret."""
    state = exc.sqlstate
    if state is None:
        if isinstance(exc, psycopg.OperationalError):
            # libpq reports refused connections, resets and FATAL startup errors (bad
            # password, missing database) alike, without an SQLSTATE: retried until the
            # tool's retry budget runs out, then support sees it.
            return ToolTransientError("postgres: cannot reach the learning database")
        return ToolPermanentError(f"postgres: {type(exc).__name__} (bad connection settings?)")
    text = f"postgres: {exc.diag.message_primary or type(exc).__name__} (SQLSTATE {state})"
    if state[:2] in TRANSIENT_SQLSTATE_CLASSES or state in TRANSIENT_SQLSTATES:
        return ToolTransientError(text)
    return ToolPermanentError(text)


class PostgresSchemaAdapter:
    """Provisions `student_<username>` (role + schema) on the learning database."""

    name = TOOL_POSTGRES
    development = False

    def __init__(
        self,
        dsn: str,
        connection_limit: int = 5,
        statement_timeout_ms: int = 30_000,
        connect_timeout_s: int = 10,
    ) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ToolPermanentError("postgres: the learning database URL is invalid") from exc
        self._dsn = dsn
        self._connection_limit = int(connection_limit)
        self._statement_timeout_ms = int(statement_timeout_ms)
        self._connect_timeout_s = connect_timeout_s
        self.host = str(params.get("host") or "localhost")
        self.port = int(params.get("port") or 5432)
        self.database = str(params.get("dbname") or params.get("user") or "postgres")
        self._hardened = False

    # -- the ToolAdapter interface ------------------------------------------------------

    def provision(self, subject: ToolSubject, progress: Progress = no_progress) -> ToolAccount:
        role = role_name(subject.username)
        password = secrets.token_urlsafe(24)
        self._harden_database()
        with self._transaction() as conn:
            self._lock(conn, role)
            self._ensure_student(conn, role, password)
        logger.info("postgres: provisioned role and schema %s", role)
        return self._account(role, ToolStatus.READY, password)

    def status(self, subject: ToolSubject) -> ToolAccount:
        role = role_name(subject.username)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT r.rolcanlogin, n.oid IS NOT NULL FROM pg_roles r "
                "LEFT JOIN pg_namespace n ON n.nspname = r.rolname WHERE r.rolname = %s",
                (role,),
            ).fetchone()
        if row is None:
            return ToolAccount(tool=self.name, status=ToolStatus.ABSENT)
        can_login, has_schema = row
        return self._account(
            role, ToolStatus.READY if can_login and has_schema else ToolStatus.DISABLED, None
        )

    def deprovision(self, subject: ToolSubject, drop: bool = False) -> None:
        role = role_name(subject.username)
        roles = [role, role + SUPERSET_ROLE_SUFFIX]
        with self._transaction() as conn:
            self._lock(conn, role)
            for name in self._existing(conn, roles):
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(name)))
        # After the commit, so a session cannot log in again between the two steps.
        with self._transaction() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                (roles,),
            )
        if drop:
            with self._transaction() as conn:
                self._lock(conn, role)
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(role))
                )
                # The companion role first: it is a member of the student's role.
                for name in self._existing(conn, list(reversed(roles))):
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
        logger.info("postgres: deprovisioned %s (drop=%s)", role, drop)

    def holders(self) -> list[Held]:
        """Student roles: direct members of `onramp_students` named `student_<username>`
        (the Superset companions are members of a student's role, not of the group, and
        roles Onramp did not make are never members). Ready = can log in and has its schema."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT r.rolname, r.rolcanlogin, n.oid IS NOT NULL FROM pg_auth_members m "
                "JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member "
                "LEFT JOIN pg_namespace n ON n.nspname = r.rolname "
                "WHERE g.rolname = %s AND r.rolname LIKE 'student\\_%%' AND NOT r.rolsuper "
                "ORDER BY r.rolname",
                (STUDENT_GROUP_ROLE,),
            ).fetchall()
        prefix = role_name("")
        return [
            Held(
                name[len(prefix) :],
                ToolStatus.READY if can_login and has_schema else ToolStatus.DISABLED,
                name,
            )
            for name, can_login, has_schema in rows
        ]

    # -- for Superset ---------------------------------------------------------------------

    def superset_dsn(self, subject: ToolSubject) -> str:
        """A DSN (with a fresh password) for the student's Superset connection.

        Superset gets its own LOGIN role, a member of the student's role, so the student's
        own password is never copied into Superset nor reset by it. Creates the student's
        role and schema when Superset is provisioned first (without touching a password).
        """
        role = role_name(subject.username)
        companion = role + SUPERSET_ROLE_SUFFIX
        password = secrets.token_urlsafe(24)
        self._harden_database()
        with self._transaction() as conn:
            self._lock(conn, role)
            self._ensure_student(conn, role, None)
            self._ensure_role(conn, companion, password, SUPERSET_CONNECTION_LIMIT, role)
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(companion))
            )
        return (
            f"postgresql://{companion}:{quote(password, safe='')}"
            f"@{self.host}:{self.port}/{self.database}"
        )

    # -- internals ------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        """One connection, one transaction: committed on success, rolled back on error."""
        try:
            with psycopg.connect(self._dsn, connect_timeout=self._connect_timeout_s) as conn:
                yield conn
        except psycopg.Error as exc:
            error = classify(exc)
            logger.warning("%s", error)
            raise error from exc

    @staticmethod
    def _lock(conn: psycopg.Connection, key: str) -> None:
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("onramp:postgres:" + key,)
        )

    @staticmethod
    def _existing(conn: psycopg.Connection, roles: list[str]) -> list[str]:
        found = {
            r[0]
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,)
            ).fetchall()
        }
        return [name for name in roles if name in found]

    def _harden_database(self) -> None:
        """Take PUBLIC's privileges away once; GRANT/REVOKE on one object must not race."""
        if self._hardened:
            return
        db = sql.Identifier(self.database)
        group = sql.Identifier(STUDENT_GROUP_ROLE)
        with self._transaction() as conn:
            self._lock(conn, "database-acl")
            if not self._existing(conn, [STUDENT_GROUP_ROLE]):
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(group))
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
            conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db, group))
            conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        self._hardened = True

    def _ensure_student(self, conn: psycopg.Connection, role: str, password: str | None) -> None:
        self._ensure_role(conn, role, password, self._connection_limit, role)
        ident = sql.Identifier(role)
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(STUDENT_GROUP_ROLE), ident))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {0} AUTHORIZATION {0}").format(ident))
        conn.execute(sql.SQL("ALTER SCHEMA {0} OWNER TO {0}").format(ident))
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(ident))

    def _ensure_role(
        self,
        conn: psycopg.Connection,
        role: str,
        password: str | None,
        connection_limit: int,
        schema: str,
    ) -> None:
        """Create or update a LOGIN role; `password=None` leaves an existing one alone."""
        ident = sql.Identifier(role)
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if row is not None and row[0]:
            raise ToolPermanentError(f"postgres: refusing to manage superuser role {role}")
        options = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE CONNECTION LIMIT {}").format(
            sql.Literal(connection_limit)
        )
        if password is not None:
            verifier = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            )
            options = sql.SQL("{} PASSWORD {}").format(options, sql.Literal(verifier.decode()))
        verb = "CREATE ROLE" if row is None else "ALTER ROLE"
        conn.execute(sql.SQL(verb + " {} WITH {}").format(ident, options))
        conn.execute(
            sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
                ident, sql.Literal(self._statement_timeout_ms)
            )
        )
        conn.execute(
            sql.SQL("ALTER ROLE {} SET search_path = {}").format(ident, sql.Identifier(schema))
        )

    def _account(self, role: str, status: ToolStatus, password: str | None) -> ToolAccount:
        return ToolAccount(
            tool=self.name,
            status=status,
            url=f"postgresql://{role}@{self.host}:{self.port}/{self.database}",
            username=role,
            secret=password,
            details={
                "host": self.host,
                "port": str(self.port),
                "database": self.database,
                "schema": role,
            },
        )

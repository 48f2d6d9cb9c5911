"""PostgresSchemaAdapter against the real server: isolation, limits, idempotency, teardown."""

import base64
import hashlib
import hmac
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from core.tools.base import ToolPermanentError, ToolSubject, ToolTransientError
from core.tools.postgres_schema import PostgresSchemaAdapter, role_name

pytestmark = pytest.mark.postgres

LIMIT = 2
TIMEOUT_MS = 1500


@pytest.fixture
def adapter(learning_db: str) -> PostgresSchemaAdapter:
    return PostgresSchemaAdapter(
        learning_db, connection_limit=LIMIT, statement_timeout_ms=TIMEOUT_MS
    )


def admin(learning_db: str) -> psycopg.Connection:
    return psycopg.connect(learning_db, autocommit=True)


def as_student(learning_db: str, role: str, password: str) -> psycopg.Connection:
    # The local server trusts loopback, so the password is checked separately below.
    return psycopg.connect(
        make_conninfo(learning_db, user=role, password=password), autocommit=True
    )


def password_matches(learning_db: str, role: str, password: str) -> bool:
    """Verify a password against the role's stored SCRAM-SHA-256 verifier (RFC 5802)."""
    with admin(learning_db) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
        ).fetchone()
    assert row is not None and row[0] is not None
    method, rest = row[0].split("$", 1)
    assert method == "SCRAM-SHA-256"
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key))


def test_provision_creates_role_and_schema_with_limits(
    adapter: PostgresSchemaAdapter, learning_db: str, make_subject: Callable[..., ToolSubject]
) -> None:
    subject = make_subject()
    account = adapter.provision(subject)
    role = role_name(subject.username)

    assert account.status == "ready" and account.development is False
    assert account.username == role
    assert account.url == f"postgresql://{role}@127.0.0.1:5432/{adapter.database}"
    assert account.secret and account.secret not in account.url
    assert account.details["schema"] == role
    assert password_matches(learning_db, role, account.secret)
    with admin(learning_db) as conn:
        can_login, limit = conn.execute(
            "SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = %s", (role,)
        ).fetchone()
        (config,) = conn.execute(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = %s AND s.setdatabase = 0",
            (role,),
        ).fetchone()
        owner = conn.execute(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s", (role,)
        ).fetchone()
    assert can_login is True and limit == LIMIT
    assert f"statement_timeout={TIMEOUT_MS}" in config
    assert f"search_path={role}" in config
    assert owner == (role,)


def test_students_are_isolated_from_each_other_and_from_public(
    adapter: PostgresSchemaAdapter, learning_db: str, make_subject: Callable[..., ToolSubject]
) -> None:
    alice, bob = make_subject("alice"), make_subject("bob")
    a, b = adapter.provision(alice), adapter.provision(bob)
    assert a.secret and b.secret and a.username and b.username

    with as_student(learning_db, a.username, a.secret) as conn:
        # search_path is the own schema: an unqualified table lands there.
        conn.execute("CREATE TABLE notes (body text)")
        conn.execute("INSERT INTO notes VALUES ('alice only')")
        assert conn.execute("SELECT current_schema()").fetchone() == (a.username,)
        assert conn.execute("SHOW statement_timeout").fetchone() == (f"{TIMEOUT_MS}ms",)

    with as_student(learning_db, b.username, b.secret) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"SELECT * FROM {a.username}.notes")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.intruder (x int)")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"CREATE TABLE {a.username}.intruder (x int)")
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")


def test_connection_limit_is_enforced(
    adapter: PostgresSchemaAdapter, learning_db: str, make_subject: Callable[..., ToolSubject]
) -> None:
    account = adapter.provision(make_subject())
    assert account.username and account.secret
    open_conns = [as_student(learning_db, account.username, account.secret) for _ in range(LIMIT)]
    try:
        with pytest.raises(psycopg.OperationalError):
            as_student(learning_db, account.username, account.secret)
    finally:
        for conn in open_conns:
            conn.close()


def test_provision_twice_keeps_objects_and_resets_password(
    adapter: PostgresSchemaAdapter, learning_db: str, make_subject: Callable[..., ToolSubject]
) -> None:
    subject = make_subject()
    role = role_name(subject.username)
    first = adapter.provision(subject)
    with admin(learning_db) as conn:
        ids_before = conn.execute(
            "SELECT (SELECT oid FROM pg_roles WHERE rolname = %s),"
            " (SELECT oid FROM pg_namespace WHERE nspname = %s)",
            (role, role),
        ).fetchone()
    second = adapter.provision(subject)
    with admin(learning_db) as conn:
        ids_after = conn.execute(
            "SELECT (SELECT oid FROM pg_roles WHERE rolname = %s),"
            " (SELECT oid FROM pg_namespace WHERE nspname = %s)",
            (role, role),
        ).fetchone()
    assert ids_before == ids_after
    assert first.secret and second.secret and first.secret != second.secret
    assert password_matches(learning_db, role, second.secret)
    assert not password_matches(learning_db, role, first.secret)


def test_concurrent_provisions_of_one_student_do_not_race(
    learning_db: str, make_subject: Callable[..., ToolSubject]
) -> None:
    subject = make_subject()
    barrier = threading.Barrier(4)

    def provision() -> str | None:
        # A fresh adapter per thread, like separate worker processes.
        adapter = PostgresSchemaAdapter(learning_db, LIMIT, TIMEOUT_MS)
        barrier.wait()
        return adapter.provision(subject).secret

    with ThreadPoolExecutor(4) as pool:
        secrets = list(pool.map(lambda _: provision(), range(4)))
    role = role_name(subject.username)
    assert sum(password_matches(learning_db, role, s or "") for s in secrets) == 1
    with admin(learning_db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (role,)
        ).fetchone() == (1,)


def test_concurrent_first_provisions_of_many_students(
    learning_db: str, make_subject: Callable[..., ToolSubject]
) -> None:
    subjects = [make_subject("many") for _ in range(6)]
    barrier = threading.Barrier(len(subjects))

    def provision(subject: ToolSubject) -> str:
        adapter = PostgresSchemaAdapter(learning_db, LIMIT, TIMEOUT_MS)
        barrier.wait()
        return adapter.provision(subject).status

    with ThreadPoolExecutor(len(subjects)) as pool:
        assert list(pool.map(provision, subjects)) == ["ready"] * len(subjects)


def test_deprovision_disables_then_drop_removes(
    adapter: PostgresSchemaAdapter, learning_db: str, make_subject: Callable[..., ToolSubject]
) -> None:
    subject = make_subject()
    account = adapter.provision(subject)
    assert account.username and account.secret
    session = as_student(learning_db, account.username, account.secret)

    adapter.deprovision(subject)
    assert adapter.status(subject).status == "disabled"
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")  # its open session was terminated
    with pytest.raises(psycopg.OperationalError):
        as_student(learning_db, account.username, account.secret)

    again = adapter.provision(subject)
    assert again.status == "ready" and adapter.status(subject).status == "ready"

    adapter.deprovision(subject, drop=True)
    assert adapter.status(subject).status == "absent"
    with admin(learning_db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (account.username,)
        ).fetchone() == (0,)
    adapter.deprovision(subject, drop=True)  # absent: nothing to do, no error


def test_superset_companion_role_reads_the_students_schema_only(
    adapter: PostgresSchemaAdapter, learning_db: str, make_subject: Callable[..., ToolSubject]
) -> None:
    subject, other = make_subject(), make_subject()
    other_account = adapter.provision(other)
    dsn = adapter.superset_dsn(subject)  # before the student's own provision
    account = adapter.provision(subject)
    assert account.username and account.secret and other_account.username
    with as_student(learning_db, account.username, account.secret) as conn:
        conn.execute("CREATE TABLE sales (amount int)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM sales").fetchone() == (0,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"SELECT * FROM {other_account.username}.anything")
    adapter.deprovision(subject, drop=True)
    with admin(learning_db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE %s", (account.username + "%",)
        ).fetchone() == (0,)


def test_unreachable_server_is_transient(make_subject: Callable[..., ToolSubject]) -> None:
    dsn = "postgresql://postgres:hunter2-secret@127.0.0.1:1/x"
    adapter = PostgresSchemaAdapter(dsn, connect_timeout_s=2)
    with pytest.raises(ToolTransientError) as info:
        adapter.provision(make_subject())
    assert "hunter2" not in str(info.value)


def test_invalid_dsn_is_permanent() -> None:
    with pytest.raises(ToolPermanentError):
        PostgresSchemaAdapter("postgresql://host:notaport:/db?bogus_option=1")


def test_missing_privileges_are_permanent(
    learning_db: str, make_subject: Callable[..., ToolSubject]
) -> None:
    weak = f"weak_{make_subject().username}"
    database = psycopg.conninfo.conninfo_to_dict(learning_db)["dbname"]
    with admin(learning_db) as conn:
        conn.execute(f"CREATE ROLE {weak} LOGIN")
        conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {weak}")
    try:
        adapter = PostgresSchemaAdapter(make_conninfo(learning_db, user=weak))
        with pytest.raises(ToolPermanentError) as info:
            adapter.provision(make_subject())
        assert "SQLSTATE 42501" in str(info.value)
    finally:
        with admin(learning_db) as conn:
            conn.execute(f"REVOKE ALL ON DATABASE {database} FROM {weak}")
            conn.execute(f"DROP ROLE {weak}")

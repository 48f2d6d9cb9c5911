"""JWT attacks against the API, and refresh-token rotation with reuse detection."""

import base64
import json
import time
from datetime import timedelta

import httpx
import jwt
import pytest
import sqlalchemy as sa

from core.accounts.security import AUDIENCE, ISSUER, TokenError, decode
from core.settings import Settings
from tests.utils.security import assert_error, browser, login, make_user, row_counts
from tests.utils.stack import Stack


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def forge(settings: Settings, claims: dict[str, object], **kw: object) -> str:
    key = kw.pop("key", settings.jwt_secret)
    headers = {"kid": settings.jwt_key_id, **kw.pop("headers", {})}  # type: ignore[dict-item]
    return jwt.encode(claims, key, algorithm=kw.pop("algorithm", "HS256"), headers=headers)  # type: ignore[arg-type]


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
async def victim(fresh: Stack) -> dict[str, object]:
    make_user(fresh.engine, "victim@example.com")
    make_user(fresh.engine, "attacker@example.com")
    async with browser(fresh) as client:
        return await login(client, "victim@example.com")


async def test_a_good_token_is_accepted(fresh: Stack, victim: dict[str, object]) -> None:
    async with browser(fresh) as client:
        response = await me(client, str(victim["access"]))
    assert response.status_code == 200 and response.json()["email"] == "victim@example.com"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_forged_access_tokens_are_refused(fresh: Stack, victim: dict[str, object]) -> None:
    s = fresh.settings
    good = claims_of(str(victim["access"]))
    now = int(time.time())
    header, payload, signature = str(victim["access"]).split(".")
    attacker_id = int(str(good["sub"])) + 1
    kid = s.jwt_key_id
    forged = {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{payload}.",
        "alg none, signature kept": f"{b64({'alg': 'none', 'kid': kid})}.{payload}.{signature}",
        "wrong key": forge(s, good, key="not-the-server-secret-but-long-enough-0000"),
        "unknown kid": forge(s, good, headers={"kid": "k-unknown"}),
        "expired": forge(s, {**good, "iat": now - 3600, "exp": now - 60}),
        "issued in the future": forge(s, {**good, "iat": now + 3600, "exp": now + 7200}),
        "wrong audience": forge(s, {**good, "aud": "some-other-api"}),
        "audience list": forge(s, {**good, "aud": [AUDIENCE, "x"]}),
        "wrong issuer": forge(s, {**good, "iss": "evil"}),
        "no expiry": forge(s, {k: v for k, v in good.items() if k != "exp"}),
        "no session id": forge(s, {k: v for k, v in good.items() if k != "sid"}),
        "refresh used as access": str(victim["refresh"]),
        "tampered subject": f"{header}.{b64({**good, 'sub': str(attacker_id)})}.{signature}",
        "tampered role": f"{header}.{b64({**good, 'role': 'staff'})}.{signature}",
        "HS512 with the right key": forge(s, good, algorithm="HS512"),
        "garbage": "not.a.jwt",
        "huge": "a" * 10_000,
    }
    async with browser(fresh) as client:
        for name, token in forged.items():
            response = await me(client, token)
            body = assert_error(response, 401)
            assert response.headers["www-authenticate"] == "Bearer", name
            assert "victim@example.com" not in response.text and "Traceback" not in body["message"]
        # A cookie carrying the same forgeries fares no better.
        for name, token in forged.items():
            client.cookies.set("onramp_access", token)
            assert (await client.get("/api/auth/me")).status_code == 401, name
        # A malformed Authorization header is refused, not ignored in favour of a cookie.
        client.cookies.set("onramp_access", str(victim["access"]))
        response = await client.get("/api/auth/me", headers={"Authorization": "Basic abc"})
        assert_error(response, 401)


def test_old_keys_verify_during_a_rotation_and_then_stop() -> None:
    old = Settings(  # type: ignore[call-arg]
        _env_file=None, jwt_key_id="k1", jwt_secret="old-secret-" + "x" * 32
    )
    token = jwt.encode(
        {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "7",
            "sid": "s",
            "jti": "j",
            "typ": "access",
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        old.jwt_secret,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    rotated = Settings(  # type: ignore[call-arg]
        _env_file=None,
        jwt_key_id="k2",
        jwt_secret="new-secret-" + "y" * 32,
        jwt_previous_keys=f"k1:{old.jwt_secret}",
    )
    assert decode(rotated, token, "access")["sub"] == "7"
    retired = Settings(  # type: ignore[call-arg]
        _env_file=None, jwt_key_id="k2", jwt_secret="new-secret-" + "y" * 32
    )
    with pytest.raises(TokenError):
        decode(retired, token, "access")
    with pytest.raises(TokenError):
        decode(rotated, token, "refresh")


def family_rows(stack: Stack, refresh: str) -> list[tuple[object, object]]:
    family = claims_of(refresh)["sid"]
    with stack.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT used_at, revoked_at FROM refresh_token WHERE family = :f"),
                {"f": family},
            ).all()
        )


async def test_refresh_rotates_and_a_replayed_token_ends_the_login(
    fresh: Stack, victim: dict[str, object]
) -> None:
    first_refresh = str(victim["refresh"])
    async with browser(fresh) as client:
        rotated = await client.post("/api/auth/refresh", json={"refresh": first_refresh})
        assert rotated.status_code == 200
        pair = rotated.json()
        assert pair["refresh"] != first_refresh and pair["access"] != victim["access"]
        assert (await me(client, pair["access"])).status_code == 200

        # The attacker replays the stolen, already rotated token.
        replay = await client.post("/api/auth/refresh", json={"refresh": first_refresh})
        assert_error(replay, 401)
        # Every token of that login is now dead: the rotated refresh and the access tokens.
        assert_error(await client.post("/api/auth/refresh", json={"refresh": pair["refresh"]}), 401)
        assert_error(await me(client, pair["access"]), 401)
        assert_error(await me(client, str(victim["access"])), 401)
    rows = family_rows(fresh, first_refresh)
    assert len(rows) == 2 and all(revoked is not None for _, revoked in rows)
    assert row_counts(fresh.engine)["refresh_token"] == 2  # nothing new was issued

    # Another login of the same user is untouched.
    async with browser(fresh) as other:
        again = await login(other, "victim@example.com")
        assert (await me(other, again["access"])).status_code == 200


async def test_logout_ends_the_login(fresh: Stack, victim: dict[str, object]) -> None:
    async with browser(fresh) as client:
        response = await client.post(
            "/api/auth/logout",
            json={"refresh": victim["refresh"]},
            headers={"Authorization": f"Bearer {victim['access']}"},
        )
        assert response.status_code == 200 and response.json() == {"logged_out": True}
        assert_error(await me(client, str(victim["access"])), 401)
        assert_error(
            await client.post("/api/auth/refresh", json={"refresh": victim["refresh"]}), 401
        )


async def test_an_expired_refresh_token_is_refused(fresh: Stack, victim: dict[str, object]) -> None:
    s = fresh.settings
    good = claims_of(str(victim["refresh"]))
    now = int(time.time())
    expired = forge(
        s, {**good, "exp": now - 1, "iat": now - int(timedelta(days=15).total_seconds())}
    )
    async with browser(fresh) as client:
        assert_error(await client.post("/api/auth/refresh", json={"refresh": expired}), 401)
        # Well signed, but never issued (no row): refused too.
        unknown = forge(s, {**good, "jti": "f" * 32})
        assert_error(await client.post("/api/auth/refresh", json={"refresh": unknown}), 401)
    assert row_counts(fresh.engine)["refresh_token"] == 1

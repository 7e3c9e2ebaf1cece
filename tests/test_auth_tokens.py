"""Unit tests of collab.auth (collab.tokens, collab.browser_policy, collab.log_redaction re-exported):
tokens, patterns, roles, share links, Origin rules, log redaction."""

from __future__ import annotations

import base64
import json
import logging
import time
import warnings

import jwt
import pytest

from collab import auth
from collab.auth import (
    OPEN_GRANT,
    SECURITY_HEADERS,
    AuthError,
    Grant,
    RedactTokens,
    authorize,
    mint_token,
    origin_allowed,
    parse_ttl,
    verify_token,
)

SECRET = "k" * 43  # the length of secrets.token_urlsafe(32)
OTHER = "z" * 43


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def forge(payload: dict, secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def expect_auth_error(code: int, status: int, fn, *args, **kwargs) -> AuthError:
    with pytest.raises(AuthError) as info:
        fn(*args, **kwargs)
    assert (info.value.close_code, info.value.http_status) == (code, status)
    assert info.value.message
    return info.value


# ---------------------------------------------------------------- round trip


def test_round_trip_edit():
    grant = verify_token(SECRET, mint_token(SECRET, ["notes", "team-*"], "edit", 3600, name="Ada"))
    assert grant.role == "edit"
    assert grant.docs == ("notes", "team-*")
    assert grant.name == "Ada"
    assert grant.share is True
    assert grant.expires is not None and 3590 < grant.expires - time.time() <= 3601


def test_round_trip_read_single_string_doc():
    grant = verify_token(SECRET, mint_token(SECRET, "notes", role="read"))
    assert grant == Grant(role="read", docs=("notes",), name=None, expires=grant.expires, share=True, jti=grant.jti)
    assert grant.jti and grant.jti != verify_token(SECRET, mint_token(SECRET, "notes")).jti, "every token has its own id"
    assert 7 * 86400 - 10 < grant.expires - time.time() <= 7 * 86400 + 1


def test_payload_is_documented_shape():
    c = claims_of(mint_token(SECRET, ["a"], "read", 60, name="Bo", share=False, now=1000.0))
    jti = c.pop("jti")
    assert isinstance(jti, str) and len(jti) == 16, "an id for revocation: 12 random bytes, URL-safe"
    assert c == {"aud": "collab", "docs": ["a"], "role": "read", "share": False, "iat": 1000, "exp": 1060, "name": "Bo"}
    assert jwt.get_unverified_header(mint_token(SECRET, "a"))["alg"] == "HS256"


def test_never_expiring_token():
    token = mint_token(SECRET, "a", ttl_seconds=None)
    assert "exp" not in claims_of(token)
    assert verify_token(SECRET, token).expires is None
    assert verify_token(SECRET, token, now=time.time() + 100 * 365 * 86400).role == "edit"


def test_duplicate_patterns_collapse_and_blank_name_dropped():
    grant = verify_token(SECRET, mint_token(SECRET, ["a", "a", "b"], name="  "))
    assert grant.docs == ("a", "b")
    assert grant.name is None


def test_token_minted_by_another_jwt_library_is_accepted():
    token = forge({"aud": "collab", "docs": ["x"], "role": "read", "exp": int(time.time()) + 60})
    grant = verify_token(SECRET, token)
    assert (grant.role, grant.docs, grant.share) == ("read", ("x",), True)


# ---------------------------------------------------------------- refusals (4001)


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(token):
    err = expect_auth_error(4001, 401, verify_token, SECRET, token)
    assert "missing" in err.message


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJ.eyJ.", "x" * 10000, "Bearer abc", "...."],
)
def test_malformed_token(token):
    expect_auth_error(4001, 401, verify_token, SECRET, token)


def test_tampered_payload():
    token = mint_token(SECRET, "notes", "read")
    header, payload, sig = token.split(".")
    claims = claims_of(token)
    claims["role"] = "edit"
    claims["docs"] = ["*"]
    expect_auth_error(4001, 401, verify_token, SECRET, ".".join([header, b64(claims), sig]))


def test_tampered_signature():
    token = mint_token(SECRET, "notes")
    head, _, sig = token.rpartition(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    expect_auth_error(4001, 401, verify_token, SECRET, f"{head}.{flipped}")
    expect_auth_error(4001, 401, verify_token, SECRET, head + ".")


def test_wrong_secret():
    expect_auth_error(4001, 401, verify_token, OTHER, mint_token(SECRET, "notes"))


def test_alg_none_refused():
    unsigned = b64({"alg": "none", "typ": "JWT"}) + "." + b64({"aud": "collab", "docs": ["*"], "role": "edit"}) + "."
    expect_auth_error(4001, 401, verify_token, SECRET, unsigned)


def test_other_hmac_algorithm_refused():
    long_secret = SECRET * 2  # 64 bytes, so PyJWT does not warn about HS512
    token = jwt.encode({"aud": "collab", "docs": ["*"], "role": "edit"}, long_secret, algorithm="HS512")
    expect_auth_error(4001, 401, verify_token, long_secret, token)


def test_expired():
    token = mint_token(SECRET, "notes", ttl_seconds=60, now=time.time() - 3600)
    err = expect_auth_error(4001, 401, verify_token, SECRET, token)
    assert "expired" in err.message


def test_expiry_with_fixed_clock_and_leeway():
    token = mint_token(SECRET, "notes", ttl_seconds=100, now=1_000_000.0)
    assert verify_token(SECRET, token, now=1_000_050.0).role == "edit"
    assert verify_token(SECRET, token, now=1_000_105.0).role == "edit"  # within the leeway
    expect_auth_error(4001, 401, verify_token, SECRET, token, now=1_000_100.0 + auth.LEEWAY_SECONDS + 1)


def test_foreign_jwt_with_same_secret_refused():
    """A JWT from the embedding app's own login (no collab audience) opens nothing."""
    expect_auth_error(4001, 401, verify_token, SECRET, forge({"sub": "user1", "docs": ["*"], "role": "edit"}))
    expect_auth_error(4001, 401, verify_token, SECRET, forge({"aud": "other", "docs": ["*"], "role": "edit"}))


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "collab", "role": "edit"},
        {"aud": "collab", "docs": ["a"]},
        {"aud": "collab", "docs": [], "role": "edit"},
        {"aud": "collab", "docs": "a", "role": "edit"},
        {"aud": "collab", "docs": ["a/b"], "role": "edit"},
        {"aud": "collab", "docs": [1], "role": "edit"},
        {"aud": "collab", "docs": ["a"], "role": "admin"},
        {"aud": "collab", "docs": ["a"], "role": "edit", "share": "yes"},
        {"aud": "collab", "docs": ["a"], "role": "edit", "name": 5},
        # A lone surrogate (half an emoji) could not be sent to the other clients in 'join'.
        {"aud": "collab", "docs": ["a"], "role": "edit", "name": "Ada \ud83e"},
        {"aud": "collab", "docs": ["a"], "role": "edit", "exp": "tomorrow"},
    ],
)
def test_bad_claims_refused(claims):
    expect_auth_error(4001, 401, verify_token, SECRET, forge(claims))


# ---------------------------------------------------------------- secrets and mint arguments


@pytest.mark.parametrize("secret", ["", "short", "x" * 31, "é" * 15])
def test_short_secret_refused_with_hint(secret):
    with pytest.raises(ValueError, match="secrets.token_urlsafe"):
        mint_token(secret, "a")
    with pytest.raises(ValueError):
        verify_token(secret, "whatever")
    with pytest.raises(ValueError):
        auth.check_secret(secret)


def test_32_byte_secret_accepted_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify_token("x" * 32, mint_token("x" * 32, "a")).docs == ("a",)
        assert verify_token("é" * 16, mint_token("é" * 16, "a")).docs == ("a",)  # 32 bytes


@pytest.mark.parametrize(
    "kwargs",
    [
        {"docs": []},
        {"docs": ["a/b"]},
        {"docs": ["../etc"]},
        {"docs": ["team-[ab]"]},
        {"docs": ["x" * 129]},
        {"docs": [""]},
        {"docs": ["a"], "role": "admin"},
        {"docs": ["a"], "ttl_seconds": 0},
        {"docs": ["a"], "ttl_seconds": -5},
        {"docs": ["a"], "ttl_seconds": float("inf")},
        {"docs": ["a"], "ttl_seconds": float("nan")},
        {"docs": ["a"], "name": "n" * 65},
    ],
)
def test_mint_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        mint_token(SECRET, **kwargs)


# ---------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("pattern", "doc", "expected"),
    [
        ("notes", "notes", True),
        ("notes", "Notes", False),  # case-sensitive
        ("notes", "notes2", False),
        ("notes", "notes.bak", False),
        ("a.b", "a.b", True),
        ("a.b", "axb", False),  # '.' is literal, not a regex wildcard
        ("team-*", "team-a", True),
        ("team-*", "team-", True),  # '*' may match nothing
        ("team-*", "team-a.b_c-d", True),
        ("team-*", "team", False),
        ("team-*", "teamx-a", False),
        ("team-*", "xteam-a", False),
        ("team-*", "Team-a", False),
        ("team-*", "team-a/../secret", False),  # '*' never spans characters outside names
        ("team-*", "team-a\n", False),
        ("*-draft", "q3-draft", True),
        ("*-draft", "q3-draft-final", False),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("a?c", "abbc", False),
        ("*", "anything.at_all-1", True),
        ("*", "", True),
        ("t*m*", "team-1", True),
    ],
)
def test_pattern_matching(pattern, doc, expected):
    assert Grant("edit", (pattern,)).allows(doc) is expected


def test_multiple_patterns_and_non_strings():
    grant = Grant("read", ("notes", "team-*"))
    assert grant.allows("notes") and grant.allows("team-x")
    assert not grant.allows("other")
    assert not grant.allows(None)  # type: ignore[arg-type]


def test_visible_docs_filters_list():
    grant = Grant("read", ("team-*", "readme"))
    assert auth.visible_docs(grant, ["a", "team-1", "readme", "team", "team-2"]) == ["team-1", "readme", "team-2"]
    assert auth.visible_docs(OPEN_GRANT, ["a", "b"]) == ["a", "b"]


# ---------------------------------------------------------------- authorize


def test_open_server_grants_everything():
    assert authorize("", None, "anything") is OPEN_GRANT
    assert authorize("", "garbage", "anything") is OPEN_GRANT
    assert OPEN_GRANT.role == "edit" and OPEN_GRANT.docs == ("*",) and OPEN_GRANT.expires is None


def test_authorize_checks_document():
    token = mint_token(SECRET, ["team-*"], "read")
    assert authorize(SECRET, token, "team-a").role == "read"
    assert authorize(SECRET, token, None).role == "read"  # no document: the list route
    err = expect_auth_error(4003, 403, authorize, SECRET, token, "other")
    assert "other" in err.message


def test_authorize_invalid_before_document_check():
    expect_auth_error(4001, 401, authorize, SECRET, None, "team-a")
    expect_auth_error(4001, 401, authorize, SECRET, mint_token(OTHER, "*"), "team-a")


def test_extract_token_prefers_bearer_header():
    assert auth.extract_token("Bearer abc", "q") == "abc"
    assert auth.extract_token("bearer   abc ", None) == "abc"
    assert auth.extract_token("Basic dXNlcjpwYXNz", "q") == "q"
    assert auth.extract_token(None, "q") == "q"
    assert auth.extract_token("", "") is None


# ---------------------------------------------------------------- roles and share links


def test_can_share_rules():
    assert Grant("edit", ("a",)).can_share("edit")
    assert Grant("edit", ("a",)).can_share("read")
    assert not Grant("read", ("a",)).can_share("edit")
    assert Grant("read", ("a",)).can_share("read")
    assert not Grant("edit", ("a",), share=False).can_share("read")
    assert not Grant("edit", ("a",), share=False).can_share("edit")
    assert not Grant("edit", ("a",)).can_share("admin")
    assert OPEN_GRANT.can_share("edit") and OPEN_GRANT.can_share("read")
    assert Grant("edit", ("a",)).can_edit and not Grant("read", ("a",)).can_edit


def test_share_edit_token_mints_read_link_for_one_document():
    grant = verify_token(SECRET, mint_token(SECRET, ["team-*"], "edit", 3600))
    link = auth.share(SECRET, grant, "team-a", "read", "https://c.example/d/team-a")
    assert link.role == "read"
    assert link.url == f"https://c.example/d/team-a#token={link.token}"
    shared = verify_token(SECRET, link.token)
    assert (shared.role, shared.docs, shared.name) == ("read", ("team-a",), None)
    assert not shared.allows("team-b")
    assert link.to_json() == {"role": "read", "token": link.token, "url": link.url, "expires": link.expires,
                              "id": shared.jti}


def test_share_link_never_outlives_sharer():
    grant = verify_token(SECRET, mint_token(SECRET, "a", "edit", ttl_seconds=120.5, now=time.time()))
    link = auth.share(SECRET, grant, "a", "edit", ttl_seconds=30 * 86400)
    assert link.expires is not None and link.expires <= grant.expires
    assert claims_of(link.token)["exp"] <= grant.expires
    forever = verify_token(SECRET, mint_token(SECRET, "a", ttl_seconds=None))
    assert auth.share(SECRET, forever, "a", "read").expires is not None  # default share TTL applies
    assert auth.share(SECRET, forever, "a", "read", ttl_seconds=None).expires is None


def test_share_read_token_may_only_mint_read():
    grant = verify_token(SECRET, mint_token(SECRET, "a", "read"))
    assert verify_token(SECRET, auth.share(SECRET, grant, "a", "read").token).role == "read"
    expect_auth_error(4003, 403, auth.share, SECRET, grant, "a", "edit")


def test_share_refusals():
    grant = verify_token(SECRET, mint_token(SECRET, "a", "edit"))
    expect_auth_error(4003, 403, auth.share, SECRET, grant, "b", "read")  # another document
    no_share = verify_token(SECRET, mint_token(SECRET, "a", "edit", share=False))
    expect_auth_error(4003, 403, auth.share, SECRET, no_share, "a", "read")
    with pytest.raises(ValueError):
        auth.share(SECRET, grant, "a", "owner")


def test_share_on_open_server():
    link = auth.share("", OPEN_GRANT, "a", "edit", "http://localhost:8000/d/a")
    assert (link.role, link.token, link.url, link.expires) == ("edit", None, "http://localhost:8000/d/a", None)
    with pytest.raises(ValueError, match="secret"):
        auth.share("", OPEN_GRANT, "a", "read", "http://localhost:8000/d/a")


def test_share_url_replaces_existing_fragment():
    grant = verify_token(SECRET, mint_token(SECRET, "a"))
    link = auth.share(SECRET, grant, "a", "read", "https://c.example/d/a#token=old")
    assert link.url.count("#") == 1 and link.url.endswith(link.token)


def test_share_url_in_query_string():
    grant = verify_token(SECRET, mint_token(SECRET, "a"))
    link = auth.share(SECRET, grant, "a", "read", "https://c.example/d/a", fragment=False)
    assert link.url == f"https://c.example/d/a?token={link.token}"
    link = auth.share(SECRET, grant, "a", "read", "https://c.example/d/a?x=1&token=old#top", fragment=False)
    assert link.url == f"https://c.example/d/a?x=1&token={link.token}"


# ---------------------------------------------------------------- origin rules


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "auth_on", "expected"),
    [
        # No Origin: not a browser.
        (None, "c.example", [], True, True),
        ("", "c.example", ["https://a.example"], True, True),
        # Auth on, no list: same origin only.
        ("https://c.example", "c.example", [], True, True),
        ("https://c.example", "c.example:443", [], True, True),
        ("http://c.example:8000", "c.example:8000", [], True, True),
        ("HTTPS://C.Example", "c.example", [], True, True),
        ("https://evil.example", "c.example", [], True, False),
        ("https://c.example.evil.example", "c.example", [], True, False),
        ("https://c.example:8443", "c.example", [], True, False),
        ("http://localhost:3000", "c.example", [], True, False),
        ("null", "c.example", [], True, False),
        ("not a url", "c.example", [], True, False),
        ("https://c.example", None, [], True, False),
        # List set: listed origins and the same origin.
        ("https://app.example", "c.example", ["https://app.example"], True, True),
        ("https://app.example:443", "c.example", ["https://app.example"], True, True),
        ("http://app.example", "c.example", ["https://app.example"], True, False),
        ("https://evil.example", "c.example", ["https://app.example"], True, False),
        ("https://c.example", "c.example", ["https://app.example"], True, True),
        ("https://evil.example", "c.example", ["https://app.example"], False, False),
        ("http://localhost:3000", "localhost:8000", ["https://app.example"], False, False),
        ("https://anything.example", "c.example", ["*"], True, True),
        ("null", "c.example", ["null"], True, True),
        # Auth off, no list: the local-first default.
        ("http://localhost:8000", "localhost:8000", [], False, True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", [], False, True),
        ("http://[::1]:8000", "[::1]:8000", [], False, True),
        ("http://192.168.1.5:8000", "192.168.1.5:8000", [], False, True),
        ("http://localhost:3000", "localhost:8000", [], False, True),
        ("http://app.localhost:5173", "127.0.0.1:8000", [], False, True),
        ("https://evil.example", "localhost:8000", [], False, False),
        ("https://evil.example", "127.0.0.1:8000", [], False, False),
        ("http://localhost.evil.example", "localhost:8000", [], False, False),
        ("http://127.0.0.1.nip.io:8000", "127.0.0.1:8000", [], False, False),
        ("null", "localhost:8000", [], False, False),
        # DNS rebinding: evil name re-pointed at the server; "same origin" by name only.
        ("http://evil.example:8000", "evil.example:8000", [], False, False),
        ("http://mybox.lan:8000", "mybox.lan:8000", ["http://mybox.lan:8000"], False, True),
    ],
)
def test_origin_allowed(origin, host, allowed, auth_on, expected):
    assert origin_allowed(origin, host, allowed, auth_on) is expected


# ---------------------------------------------------------------- headers and logs


def test_security_headers():
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp and "default-src 'self'" in csp
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
    assert SECURITY_HEADERS["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize(
    "text",
    [
        "GET /ws/a?token={t} HTTP/1.1",
        "GET /ws/a?x=1&token={t}&y=2",
        "GET /ws/a?TOKEN={t}",
        "/api/docs?access_token={t}",
        "https://c.example/d/a#token={t}",
        "redirect to /login?next=%2Fws%2Fa%3Ftoken%3D{t}",
        "Authorization: Bearer {t}",
        "payload {t} seen",
    ],
)
def test_redact(text):
    token = mint_token(SECRET, "a")
    out = auth.redact(text.format(t=token))
    assert token not in out
    assert token.split(".")[2] not in out  # not even the signature
    assert "[REDACTED]" in out


def test_redact_leaves_other_text_alone():
    assert auth.redact('GET /api/docs/tokens?x=1 HTTP/1.1" 200') == 'GET /api/docs/tokens?x=1 HTTP/1.1" 200'
    assert auth.redact("?token=abc&y=2") == "?token=[REDACTED]&y=2"


def test_filter_on_uvicorn_style_access_record(caplog):
    token = mint_token(SECRET, "a")
    logger = logging.getLogger("test.collab.access")
    flt = RedactTokens()
    logger.addFilter(flt)
    try:
        with caplog.at_level(logging.INFO, logger="test.collab.access"):
            logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/ws/a?token={token}", "1.1", 101)
            logger.info(f"connect /ws/a?token={token}")
            logger.info("%(path)s", {"path": f"/ws/a?token={token}"})
    finally:
        logger.removeFilter(flt)
    assert len(caplog.records) == 3
    record = caplog.records[0]
    assert isinstance(record.args, tuple) and len(record.args) == 5 and record.args[4] == 101
    assert token not in caplog.text
    assert caplog.text.count("token=[REDACTED]") == 3


def test_install_log_redaction_is_idempotent():
    name = "test.collab.install"
    logger = logging.getLogger(name)
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        auth.install_log_redaction([name])
        auth.install_log_redaction([name])
        assert sum(isinstance(f, RedactTokens) for f in logger.filters) == 1
        assert sum(isinstance(f, RedactTokens) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)
        logger.filters.clear()
        for h in logging.getLogger().handlers:
            h.filters[:] = [f for f in h.filters if not isinstance(f, RedactTokens)]


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
     ("1.5h", 5400), (" 7D ", 604800)],
)
def test_parse_ttl(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0h", "-5m", "7 days", "1y", "h", "1e9", "inf", "nan", "7d12h"])
def test_parse_ttl_rejects(text):
    with pytest.raises(ValueError):
        parse_ttl(text)


def test_parse_ttl_optional():
    assert auth.parse_ttl_optional("never") is None
    assert auth.parse_ttl_optional("None") is None
    assert auth.parse_ttl_optional("1h") == 3600


def test_auth_reexports_the_split_modules():
    from collab import browser_policy, log_redaction, protocol, tokens

    assert auth.mint_token is tokens.mint_token and auth.origin_allowed is browser_policy.origin_allowed
    assert auth.RedactTokens is log_redaction.RedactTokens and auth.SECURITY_HEADERS is browser_policy.SECURITY_HEADERS
    assert all(hasattr(auth, name) for name in auth.__all__)
    # One source for close codes: the token errors use the protocol's.
    assert (auth.CLOSE_BAD_TOKEN, auth.CLOSE_NOT_ALLOWED) == (protocol.CLOSE_BAD_TOKEN, protocol.CLOSE_NOT_ALLOWED) == (4001, 4003)


def test_token_name_with_emoji_is_kept():
    token = mint_token(SECRET, "a", name="Ada 🦊")
    assert verify_token(SECRET, token).name == "Ada 🦊"

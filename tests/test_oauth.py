"""OAUTHBEARER (RFC 7628) and XOAUTH2: the mechanisms step by step (the
RFC's example dialogues), the JWT validator with keys made here, the RFC
7662 introspection validator against a real endpoint on loopback, the
checker's second opinion, and ``[auth.oauth]`` in the configuration."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from mailsrv.auth import sasl
from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.claims import ClaimRules
from mailsrv.auth.introspection import IntrospectionValidator
from mailsrv.auth.jwt import JWTValidator, load_public_key
from mailsrv.auth.oauth import (
    ITokenValidator,
    OAuthBearer,
    OAuthErrorInfo,
    TokenCredentials,
    TokenRefused,
    XOAuth2,
)
from mailsrv.auth.passwdfile import PasswdFile
from mailsrv.config import load_config
from mailsrv.errors import ConfigError, TemporaryFailure
from tests.oauth_helpers import Endpoint, Keys, claims, sign

#: RFC 7628 4.1's initial client response, as sent.
RFC7628_SUCCESS = (
    b"bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVy"
    b"IHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB"
)
#: RFC 7628 4.3: the request with an empty "auth", and the server's answer.
RFC7628_FAILURE = (
    b"bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9AQE="
)
RFC7628_ERROR = (
    b"eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJleGFtcGxlX3Njb3BlIiwib3BlbmlkLWNvbmZpZ3Vy"
    b"YXRpb24iOiJodHRwczovL2V4YW1wbGUuY29tLy53ZWxsLWtub3duL29wZW5pZC1jb25maWd1cmF0aW9uIn0="
)
RFC7628_INFO = OAuthErrorInfo(
    "example_scope", "https://example.com/.well-known/openid-configuration"
)
RFC7628_TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="


@implementer(ITokenValidator)
class Tokens:
    """Knows some tokens; records what it was asked."""

    def __init__(self, **tokens: str) -> None:
        self.tokens = {token: user for user, token in tokens.items()}
        self.asked: list[tuple[str, str | None]] = []

    def validate(self, token: str, user: str | None) -> defer.Deferred[str]:
        self.asked.append((token, user))
        found = self.tokens.get(token)
        if found is None or (user is not None and user != found):
            return defer.fail(TokenRefused("no such token"))
        return defer.succeed(found)


def fired(result: Any) -> Any:
    if isinstance(result, defer.Deferred):
        out: list[Any] = []
        result.addBoth(out.append)
        assert out, "the step has not fired"
        return out[0]
    return result


class MechanismTests(unittest.SynchronousTestCase):
    def test_rfc7628_success(self) -> None:
        """RFC 7628 4.1: the initial response alone logs in."""
        tokens = Tokens(**{"user@example.com": RFC7628_TOKEN})
        step = fired(OAuthBearer(tokens).start(base64.b64decode(RFC7628_SUCCESS)))
        self.assertEqual(
            step, sasl.Credentials(TokenCredentials(b"user@example.com", RFC7628_TOKEN))
        )
        self.assertEqual(tokens.asked, [(RFC7628_TOKEN, "user@example.com")])

    def test_rfc7628_failure(self) -> None:
        """RFC 7628 4.3, byte for byte: the error challenge, the dummy
        response, the failure."""
        mechanism = OAuthBearer(Tokens(), RFC7628_INFO)
        step = fired(mechanism.start(base64.b64decode(RFC7628_FAILURE)))
        self.assertEqual(step, sasl.Challenge(base64.b64decode(RFC7628_ERROR), failed=True))
        self.assertIsInstance(mechanism.respond(b"\x01"), sasl.Refusal)

    def test_refused_token_and_wrong_user(self) -> None:
        tokens = Tokens(alice="t0k3n")
        for message in (
            b"n,,\x01auth=Bearer other\x01\x01",
            b"n,a=bob,\x01auth=Bearer t0k3n\x01\x01",
        ):
            step = fired(OAuthBearer(tokens).start(message))
            self.assertEqual(step, sasl.Challenge(b'{"status":"invalid_token"}', failed=True))
        # Without an authzid the token names the user.
        step = fired(OAuthBearer(tokens).start(b"n,,\x01auth=bearer t0k3n\x01\x01"))
        self.assertEqual(step.credentials.username, b"alice")

    def test_malformed(self) -> None:
        for message in (
            b"\x01",  # RFC 7628 3.1: may simply fail
            b"n,,auth=Bearer x\x01\x01",  # no kvsep after the header
            b"p=tls-unique,,\x01auth=Bearer x\x01\x01",  # no channel binding here
            b"n,a=x\x01auth=Bearer x\x01\x01",
            b"n,,\x01auth=Bearer x\x01",  # unterminated
            b"n,,\x01auth\x01\x01",
            b"n,x=y,\x01auth=Bearer x\x01\x01",
        ):
            step = fired(OAuthBearer(Tokens()).start(message))
            self.assertIsInstance(step, sasl.Refusal, repr(message))

    def test_unknown_keys_ignored(self) -> None:
        message = b"y,,\x01host=h\x01port=993\x01future=x y\x01auth=Bearer t\x01\x01"
        step = fired(OAuthBearer(Tokens(alice="t")).start(message))
        self.assertIsInstance(step, sasl.Credentials)

    def test_validator_trouble_is_not_a_refusal(self) -> None:
        @implementer(ITokenValidator)
        class Away:
            def validate(self, token: str, user: str | None) -> defer.Deferred[str]:
                return defer.fail(TemporaryFailure("endpoint away"))

        result = fired(OAuthBearer(Away()).start(b"n,,\x01auth=Bearer t\x01\x01"))
        self.assertTrue(result.check(TemporaryFailure))

    def test_xoauth2(self) -> None:
        tokens = Tokens(alice="t0k3n")
        step = fired(XOAuth2(tokens).start(b"user=alice\x01auth=Bearer t0k3n\x01\x01"))
        self.assertEqual(step.credentials.username, b"alice")
        mechanism = XOAuth2(tokens, OAuthErrorInfo(scope="mail"))
        step = fired(mechanism.start(b"user=bob\x01auth=Bearer t0k3n\x01\x01"))
        self.assertEqual(
            step,
            sasl.Challenge(b'{"status":"401","schemes":"Bearer","scope":"mail"}', failed=True),
        )
        self.assertIsInstance(mechanism.respond(b""), sasl.Refusal)
        self.assertIsInstance(fired(XOAuth2(tokens).start(b"auth=Bearer x\x01\x01")), sasl.Refusal)


_KEYS: list[Keys] = []


def keys() -> Keys:
    """The keys of the run, made once (an RSA key takes a while)."""
    if not _KEYS:
        _KEYS.append(Keys())
    return _KEYS[0]


class JWTTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.keys = keys()

    def validator(self, **rules: Any) -> JWTValidator:
        return JWTValidator(ClaimRules(**rules), public_key=self.keys.rsa.public_key())

    def outcome(self, validator: JWTValidator, token: str, user: str | None = None) -> str:
        result = fired(validator.validate(token, user))
        if isinstance(result, str):
            return result
        result.trap(TokenRefused)
        return f"refused: {result.value}"

    def test_each_algorithm(self) -> None:
        token = claims("alice@example.com")
        rsa = JWTValidator(ClaimRules(), public_key=load_public_key(Keys.pem(self.keys.rsa)))
        ec = JWTValidator(ClaimRules(), public_key=load_public_key(Keys.pem(self.keys.ec)))
        hs = JWTValidator(ClaimRules(), secret=self.keys.secret)
        for validator, alg, key in (
            (rsa, "RS256", self.keys.rsa),
            (ec, "ES256", self.keys.ec),
            (hs, "HS256", self.keys.secret),
        ):
            self.assertEqual(self.outcome(validator, sign(token, alg, key)), "alice@example.com")

    def test_refusals(self) -> None:
        validator = self.validator(issuer="https://idp", audience="imap", scope="mail")
        good: dict[str, Any] = {
            "iss": "https://idp",
            "aud": ["imap", "smtp"],
            "scope": "openid mail",
        }
        self.assertEqual(
            self.outcome(validator, sign(claims(**good), "RS256", self.keys.rsa)), "alice"
        )
        other = rsa_key = self.keys.rsa
        cases = {
            "the token has expired": sign(claims(lifetime=-61, **good), "RS256", rsa_key),
            "the token is not valid yet (nbf)": sign(
                claims(nbf=int(time.time()) + 3600, **good), "RS256", rsa_key
            ),
            "the token is meant for 'smtp'": sign(
                claims(**{**good, "aud": "smtp"}), "RS256", rsa_key
            ),
            "the token was issued by 'https://evil'": sign(
                claims(**{**good, "iss": "https://evil"}), "RS256", rsa_key
            ),
            "the token lacks the scope": sign(
                claims(**{**good, "scope": "openid"}), "RS256", rsa_key
            ),
            "the token's signature does not verify": sign(claims(**good), "RS256", Keys().rsa),
            "the token is signed with 'none'": sign(claims(**good), "none", other),
            # An RSA public key used as an HMAC secret: the classic confusion.
            "the token is signed with 'HS256'": sign(claims(**good), "HS256", Keys.pem(rsa_key)),
            "the token has critical header parameters": sign(
                claims(**good), "RS256", rsa_key, {"crit": ["exp"]}
            ),
            "the token has no expiry (exp)": sign(
                {k: v for k, v in claims(**good).items() if k != "exp"}, "RS256", rsa_key
            ),
            "the token is not a JWT": "abc.def",
        }
        for reason, token in cases.items():
            self.assertEqual(self.outcome(validator, token), f"refused: {reason}")

    def test_user_claims_and_mismatch(self) -> None:
        token = sign(claims("alice"), "RS256", self.keys.rsa)
        self.assertEqual(self.outcome(self.validator(), token, "alice"), "alice")
        self.assertEqual(
            self.outcome(self.validator(), token, "bob"),
            "refused: the token is for 'alice', not 'bob'",
        )
        self.assertEqual(self.outcome(self.validator(user_claims=("sub",)), token), "id-alice")
        nameless = sign({"exp": time.time() + 60}, "RS256", self.keys.rsa)
        self.assertEqual(
            self.outcome(self.validator(), nameless),
            "refused: the token names no user (email, sub)",
        )

    def test_weak_keys_refused(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        other_curve = ec.generate_private_key(ec.SECP384R1())
        self.assertRaises(ValueError, load_public_key, Keys.pem(small))
        self.assertRaises(ValueError, load_public_key, Keys.pem(other_curve))
        self.assertRaises(ValueError, load_public_key, b"not a key")
        self.assertRaises(ValueError, JWTValidator, ClaimRules(), secret=b"short")


class IntrospectionTests(unittest.TestCase):
    """Against a real endpoint on loopback, over Twisted's HTTP client."""

    def setUp(self) -> None:
        self.endpoint = Endpoint(self)
        now = int(time.time())
        self.endpoint.tokens = {
            "good": {"active": True, "username": "alice", "exp": now + 300, "aud": "imap"},
            "expired": {"active": True, "username": "alice", "exp": now - 120},
            "other-audience": {"active": True, "username": "alice", "aud": "smtp"},
            "revoked": {"active": False},
        }

    def validator(self, secret: str = "client secret", **kwargs: Any) -> IntrospectionValidator:
        rules = ClaimRules(
            user_claims=("username", "email", "sub"), require_exp=False, audience="imap"
        )
        return IntrospectionValidator(self.endpoint.url, "mailsrv", secret, rules, **kwargs)

    async def outcome(self, validator: IntrospectionValidator, token: str, user: Any = None) -> str:
        try:
            return await validator.validate(token, user)
        except TokenRefused as e:
            return f"refused: {e}"
        except TemporaryFailure as e:
            return f"unavailable: {e}"

    @defer.inlineCallbacks
    def test_answers(self) -> Any:
        check = defer.Deferred.fromCoroutine
        validator = self.validator()
        self.assertEqual((yield check(self.outcome(validator, "good", "alice"))), "alice")
        cases = {
            "expired": "refused: the token has expired",
            "other-audience": "refused: the token is meant for 'smtp'",
            "revoked": "refused: the authorization server says the token is not active",
            "unknown": "refused: the authorization server says the token is not active",
        }
        for token, answer in cases.items():
            self.assertEqual((yield check(self.outcome(validator, token))), answer)
        self.assertEqual(
            (yield check(self.outcome(validator, "good", "bob"))),
            "refused: the token is for 'alice', not 'bob'",
        )
        form = self.endpoint.requests[0]
        self.assertEqual(form.getHeader("content-type"), "application/x-www-form-urlencoded")

    @defer.inlineCallbacks
    def test_cache(self) -> Any:
        validator = self.validator()
        for _ in range(3):
            yield validator.validate("good", "alice")
        self.assertEqual(len(self.endpoint.requests), 1)
        # Inactive answers are not kept: each is asked again.
        for _ in range(2):
            yield defer.Deferred.fromCoroutine(self.outcome(validator, "revoked"))
        self.assertEqual(len(self.endpoint.requests), 3)
        uncached = self.validator(cache_size=0)
        for _ in range(2):
            yield uncached.validate("good", "alice")
        self.assertEqual(len(self.endpoint.requests), 5)

    @defer.inlineCallbacks
    def test_wrong_client_secret_is_unavailable(self) -> Any:
        answer = yield defer.Deferred.fromCoroutine(
            self.outcome(self.validator(secret="wrong"), "good")
        )
        self.assertEqual(
            answer,
            "unavailable: the introspection endpoint answered HTTP 401"
            " (are client_id and client_secret right?)",
        )

    @defer.inlineCallbacks
    def test_timeout_is_unavailable(self) -> Any:
        self.endpoint.hold = True
        answer = yield defer.Deferred.fromCoroutine(
            self.outcome(self.validator(timeout=0.2), "good")
        )
        self.assertEqual(
            answer, "unavailable: the introspection endpoint did not answer within 0.2 seconds"
        )

    @defer.inlineCallbacks
    def test_unreachable_is_unavailable(self) -> Any:
        validator = self.validator()
        yield self.endpoint.stop()
        answer = yield defer.Deferred.fromCoroutine(self.outcome(validator, "good"))
        self.assertTrue(
            answer.startswith("unavailable: the introspection endpoint cannot be reached"), answer
        )


class CheckerTests(unittest.TestCase):
    """The Portal's side: a token opens only the account of a user who has
    one here, and only if the validator agrees again."""

    def setUp(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("alice:{PLAIN}x\n")
        self.tokens = Tokens(alice="ta", bob="tb")
        self.checker = PasswdFileChecker(
            PasswdFile(path), run_in_thread=False, token_validator=self.tokens
        )

    @defer.inlineCallbacks
    def test_tokens(self) -> Any:
        name = yield self.checker.requestAvatarId(TokenCredentials(b"alice", "ta"))
        self.assertEqual(name, "alice")
        for forged in (
            TokenCredentials(b"alice", "tb"),  # bob's token
            TokenCredentials(b"bob", "tb"),  # valid, but bob has no account here
            TokenCredentials(b"alice", "nothing"),
        ):
            with self.assertRaises(UnauthorizedLogin):
                yield self.checker.requestAvatarId(forged)


class ConfigTests(unittest.SynchronousTestCase):
    """[auth.oauth] is checked when loaded; errors name file, key, reason."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.keys = keys()
        self.pem = os.path.join(self.dir, "idp.pem")
        with open(self.pem, "wb") as f:
            f.write(Keys.pem(self.keys.ec))
        self.passwd = os.path.join(self.dir, "passwd")
        with open(self.passwd, "w"):
            pass

    def load(self, oauth: str) -> Any:
        path = os.path.join(self.dir, "mailsrv.toml")
        with open(path, "w") as f:
            f.write(f'[users]\npasswd_file = "{self.passwd}"\n[auth.oauth]\n' + oauth)
        return load_config(path, require_listeners=False, check_files=True)

    def error(self, oauth: str) -> tuple[str, str]:
        error = self.assertRaises(ConfigError, self.load, oauth)
        self.assertEqual(error.path, os.path.join(self.dir, "mailsrv.toml"))
        return error.key, error.reason

    def test_good(self) -> None:
        config = self.load(f'validator = "jwt"\njwt_public_key = "{self.pem}"\naudience = "imap"\n')
        self.assertEqual(config.auth.oauth.audience, "imap")
        self.assertEqual(config.auth.oauth.mechanisms, ("OAUTHBEARER", "XOAUTH2"))
        self.assertEqual(self.load("").auth.oauth.validator, "")

    def test_errors(self) -> None:
        bad_key = os.path.join(self.dir, "bad.pem")
        with open(bad_key, "w") as f:
            f.write("not a key")
        cases = {
            'validator = "saml"': ("auth.oauth.validator", "must be one of"),
            "colour = 1": ("auth.oauth.colour", "unknown key (known keys of [auth.oauth]"),
            'validator = "jwt"': ("auth.oauth.jwt_public_key", "needs exactly one of"),
            f'validator = "jwt"\njwt_public_key = "{bad_key}"': (
                "auth.oauth.jwt_public_key",
                f"{bad_key}: not a PEM public key",
            ),
            'validator = "jwt"\njwt_public_key = "/nonexistent.pem"': (
                "auth.oauth.jwt_public_key",
                "cannot read /nonexistent.pem",
            ),
            'validator = "introspection"\nintrospection_url = "http://idp.example/i"\n'
            'client_id = "m"\nclient_secret = "s"': (
                "auth.oauth.introspection_url",
                "must be https",
            ),
            'validator = "introspection"\nintrospection_url = "https://i/"\nclient_secret = "s"': (
                "auth.oauth.client_id",
                "needs one",
            ),
            'validator = "introspection"\nintrospection_url = "https://idp/i"\nclient_id = "m"': (
                "auth.oauth.client_secret",
                "give exactly one",
            ),
            'mechanisms = ["OAUTHBEARER", "PLAIN"]': ("auth.oauth.mechanisms", "unknown mechanism"),
            "timeout = 0": ("auth.oauth.timeout", "must be at least 0.1"),
        }
        for text, (key, reason) in cases.items():
            got_key, got_reason = self.error(text + "\n")
            self.assertEqual(got_key, key, text)
            self.assertIn(reason, got_reason, text)

    def test_not_a_table(self) -> None:
        path = os.path.join(self.dir, "mailsrv.toml")
        with open(path, "w") as f:
            f.write('[auth]\noauth = "jwt"\n')
        error = self.assertRaises(ConfigError, load_config, path, require_listeners=False)
        self.assertEqual(error.key, "auth.oauth")

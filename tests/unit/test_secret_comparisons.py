"""Secrets are compared by hash lookup or in constant time, never with ``==`` on the secret.

A scan of the source: any equality test that mentions a token, secret, password, CSRF value, MAC
or digest must be one of the reviewed forms below (SQL lookups by a token's hash, which compare
hashes inside the database; a session row's ID and owner; comparisons of values the same request
supplied).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import hatchway

SECRETISH = re.compile(r"token|secret|password|csrf|\bmac\b|digest", re.I)
# SQLAlchemy column compared with the hash of the presented token: a lookup, not a comparison.
HASH_LOOKUP = re.compile(r"^[A-Z]\w*\.\w*token_hash (==|!=) (crypto\.)?hash_token\(")
# A session row's own ID and owner: not secrets, only the table's name says "token".
SESSION_ROW = re.compile(r"^ApiToken\.(id|user_id) == ")
REVIEWED = {
    "password != confirm",  # web sign-up form: both typed by the same person in one request
    'new != form_secret(form, "new_password_confirm")',  # Account > Password: the same
    'password != form_secret(form, "password_confirm")',  # Manage > Users > Set password: the same
    "body.new_password == body.current_password",  # both in one request, from one caller
    'k != "HATCHWAY_AGENT_TOKEN"',  # a variable's name, not its value
    "len(tokens) == 2",  # sshd_config words
    'tokens[1].lower() == "all"',
}


def test_no_secret_is_compared_with_equality() -> None:
    root = Path(hatchway.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Compare) or not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                continue
            text = ast.get_source_segment(source, node) or ""
            if SECRETISH.search(text) and not HASH_LOOKUP.match(text) and not SESSION_ROW.match(text) and text not in REVIEWED:
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: {text}")
    assert not offenders, "use hmac.compare_digest or a hash lookup:\n" + "\n".join(offenders)


def test_constant_time_helpers_are_what_the_server_uses() -> None:
    from hatchway.server import crypto

    assert crypto.constant_time_equal("a" * 64, "a" * 64) and not crypto.constant_time_equal("a", "b")
    assert crypto.hash_token("hws_x") == crypto.hash_token("hws_x") != crypto.hash_token("hws_y")
    security = (Path(hatchway.__file__).parent / "server" / "web" / "security.py").read_text()
    assert security.count("hmac.compare_digest(") >= 2  # CSRF tokens and signed flash cookies

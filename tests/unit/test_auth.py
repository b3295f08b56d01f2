"""Joining a cluster with Ray's token authentication: where the token is found, and what a
driver does with the head's answers (the GCS itself is asked in tests/e2e/test_node_loss.py)."""

from __future__ import annotations

import pytest

from raytrain_orch.core.errors import ClusterAccessError
from raytrain_orch.ray.auth import auth_token, authenticate, gcs_address

HEAD = "10.0.0.5:6379"


def test_token_comes_from_ray_auth_token_then_its_path_then_the_home_file(tmp_path):
    home_file = tmp_path / ".ray" / "auth_token"
    home_file.parent.mkdir()
    home_file.write_text("from-home\n")
    other = tmp_path / "token"
    other.write_text("from-path")

    assert auth_token({"RAY_AUTH_TOKEN": " from-env ", "RAY_AUTH_TOKEN_PATH": str(other)}) == (
        "from-env",
        "RAY_AUTH_TOKEN",
    )
    assert auth_token({"RAY_AUTH_TOKEN_PATH": str(other)}) == ("from-path", str(other))
    assert auth_token({"RAY_AUTH_TOKEN_PATH": str(home_file)}) == ("from-home", str(home_file))
    token, where = auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    assert token is None and "RAY_AUTH_TOKEN" in where and "missing" in where


class Head:
    """A GCS that wants ``token`` (or none), as ``probe`` would find it; records what it was asked."""

    def __init__(self, token: str | None):
        self.token, self.asked = token, []

    def __call__(self, address: str, token: str | None) -> str:
        self.asked.append((address, token))
        return "ok" if self.token is None or token == self.token else "refused"


def test_a_head_without_authentication_is_joined_as_it_is(tmp_path):
    head, environ = Head(None), {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}

    assert authenticate(HEAD, ask=head, environ=environ) is False
    assert "RAY_AUTH_MODE" not in environ and head.asked == [(HEAD, None)]


def test_a_token_head_is_joined_with_the_token_ray_finds_turning_token_mode_on(tmp_path):
    (tmp_path / "token").write_text("s3cret")
    head, environ = Head("s3cret"), {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}

    assert authenticate(HEAD, ask=head, environ=environ) is True
    assert environ["RAY_AUTH_MODE"] == "token"
    assert head.asked == [(HEAD, None), (HEAD, "s3cret")]


def test_a_refused_token_is_one_line_naming_where_it_came_from_and_the_fix():
    with pytest.raises(ClusterAccessError) as raised:
        authenticate(HEAD, ask=Head("s3cret"), environ={"RAY_AUTH_TOKEN": "old"})

    assert str(raised.value) == (
        f"the Ray cluster at {HEAD} refused the token from RAY_AUTH_TOKEN; copy the head's token "
        "(run `ray get-auth-token` on the head) into RAY_AUTH_TOKEN or ~/.ray/auth_token"
    )
    assert raised.value.exit_code == 2


def test_a_missing_token_says_where_it_was_looked_for(tmp_path):
    with pytest.raises(
        ClusterAccessError, match=r"requires a token and none was found \(looked in RAY_AUTH_TOKEN, .*none\)"
    ):
        authenticate(HEAD, ask=Head("s3cret"), environ={"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})


def test_token_mode_set_by_the_user_is_checked_with_the_token_only():
    head, environ = Head("s3cret"), {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "s3cret"}

    assert authenticate(HEAD, ask=head, environ=environ) is False  # nothing to turn on
    assert head.asked == [(HEAD, "s3cret")]


@pytest.mark.parametrize("address", ["auto", "ray://head:10001", "http://head:8265", "local", "head"])
def test_addresses_ray_resolves_itself_are_not_probed(address):
    head = Head("s3cret")

    assert authenticate(address, ask=head, environ={}) is False
    assert head.asked == [] and gcs_address(address) is None


def test_a_gcs_address_is_host_and_port():
    assert gcs_address("127.0.0.1:6379") == "127.0.0.1:6379"
    assert gcs_address("head.cluster.local:6379") == "head.cluster.local:6379"

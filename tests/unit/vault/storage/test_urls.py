"""Store addresses in messages (storage/urls.py): never with a password."""

from __future__ import annotations

import pytest

from crate_cli.vault.storage.urls import redact_store_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://crate:hunter2@db:5432/vault", "postgresql://crate:***@db:5432/vault"),
        (
            "postgres://u:hunter2@[::1]/x?sslmode=require",
            "postgres://u:***@[::1]/x?sslmode=require",
        ),
        # Characters a password should have had encoded hide more, never less.
        ("postgresql://u:hun/ter@2@h/x", "postgresql://u:***@h/x"),
        ("postgresql://u:p%40ss@h/x", "postgresql://u:***@h/x"),
        ("postgresql://u:@h/x", "postgresql://u:***@h/x"),
        # libpq's password parameter.
        (
            "postgresql://h/x?sslmode=require&password=hunter2",
            "postgresql://h/x?sslmode=require&password=***",
        ),
        ("postgresql://h/x?PASSWORD=hunter2#f", "postgresql://h/x?PASSWORD=***#f"),
        ("postgresql://h/x?sslpassword=hunter2&a=b", "postgresql://h/x?sslpassword=***&a=b"),
        # A libpq connection string is no store, but its password is hidden too.
        ("host=db password=hunter2 user=u", "host=db password=*** user=u"),
        ("host=db password = 'hun ter2' user=u", "host=db password = *** user=u"),
        # No scheme at all: user information is still found.
        ("u:hunter2@h/x", "u:***@h/x"),
        # Nothing to hide.
        ("postgresql://crate@db/vault", "postgresql://crate@db/vault"),
        ("postgresql://db:5432/vault", "postgresql://db:5432/vault"),
        ("sqlite", "sqlite"),
        ("", ""),
    ],
)
def test_the_password_is_replaced(url: str, shown: str) -> None:
    assert redact_store_url(url) == shown

"""Name transformers of `crate run --name-transformer`, with Doppler's meanings."""

from __future__ import annotations

import pytest

from crate_cli.errors import ExitCode, InvalidInput
from crate_cli.run.transformers import TRANSFORMERS, check_transformer, transform

KINDS = ("camel", "upper-camel", "lower-snake", "lower-kebab", "tf-var", "dotnet-env")


def one(name: str, kind: str) -> str:
    ((new, value),) = transform([(name, "v")], kind)
    assert value == "v"
    return new


def test_the_kinds_are_dopplers() -> None:
    assert set(TRANSFORMERS) == set(KINDS)


# Doppler's documented example, and the shapes a secret name can take.
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "TWILIO_API_KEY",
            [
                "twilioApiKey",
                "TwilioApiKey",
                "twilio_api_key",
                "twilio-api-key",
                "TF_VAR_twilio_api_key",
                "TwilioApiKey",
            ],
        ),
        ("API_V2", ["apiV2", "ApiV2", "api_v2", "api-v2", "TF_VAR_api_v2", "ApiV2"]),
        (
            "S3_BUCKET_2",
            [
                "s3Bucket2",
                "S3Bucket2",
                "s3_bucket_2",
                "s3-bucket-2",
                "TF_VAR_s3_bucket_2",
                "S3Bucket2",
            ],
        ),
        ("PORT", ["port", "Port", "port", "port", "TF_VAR_port", "Port"]),
        ("db_url", ["dbUrl", "DbUrl", "db_url", "db-url", "TF_VAR_db_url", "DbUrl"]),
        (
            "SMTP__USER_NAME",
            [
                "smtpUserName",
                "SmtpUserName",
                "smtp_user_name",
                "smtp-user-name",
                "TF_VAR_smtp_user_name",
                "Smtp__UserName",
            ],
        ),
    ],
)
def test_examples(name: str, expected: list[str]) -> None:
    assert [one(name, kind) for kind in KINDS] == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SMTP__USER_NAME", "Smtp__UserName"),
        ("LOGGING__LOG_LEVEL__DEFAULT", "Logging__LogLevel__Default"),
        ("CONNECTION_STRINGS__DB", "ConnectionStrings__Db"),
        ("TWILIO_API_KEY", "TwilioApiKey"),
    ],
)
def test_dotnet_env_keeps_double_underscores_as_section_separators(
    name: str, expected: str
) -> None:
    assert one(name, "dotnet-env") == expected


def test_values_and_order_are_kept() -> None:
    pairs = [("Z_LAST", "z value"), ("A_FIRST", ""), ("M_MID", "${NOT_RESOLVED} $x\n")]
    assert transform(pairs, "lower-kebab") == [
        ("z-last", "z value"),
        ("a-first", ""),
        ("m-mid", "${NOT_RESOLVED} $x\n"),
    ]


def test_nothing_in_nothing_out() -> None:
    assert transform([], "camel") == []


@pytest.mark.parametrize(
    ("kind", "first", "second", "result"),
    [
        ("camel", "TWILIO_API_KEY", "TWILIO__API_KEY", "twilioApiKey"),
        ("camel", "API_KEY", "api_key", "apiKey"),
        ("upper-camel", "API_KEY", "ApI_kEy", "ApiKey"),
        ("lower-snake", "DB_URL", "db_url", "db_url"),
        ("lower-kebab", "DB_URL", "Db_Url", "db-url"),
        ("tf-var", "REGION", "region", "TF_VAR_region"),
        ("dotnet-env", "SMTP__HOST", "smtp__host", "Smtp__Host"),
    ],
)
def test_two_names_that_become_one_are_a_usage_error(
    kind: str, first: str, second: str, result: str
) -> None:
    with pytest.raises(InvalidInput) as bad:
        transform([(first, "value-one"), (second, "value-two")], kind)
    assert bad.value.exit_code == ExitCode.USAGE
    assert f"turns both {first} and {second} into {result}" in bad.value.message
    assert "value-" not in bad.value.diagnostics()


@pytest.mark.parametrize("kind", ["camel", "upper-camel", "lower-snake", "lower-kebab"])
def test_a_name_of_underscores_only_is_refused(kind: str) -> None:
    # `_` is a valid secret name, but has no words to transform.
    with pytest.raises(InvalidInput, match="empty name"):
        transform([("_", "v")], kind)


def test_names_without_collision_are_all_kept() -> None:
    names = ["A", "A_B", "AB", "A_B_C", "ABC"]
    assert [n for n, _ in transform([(n, n) for n in names], "camel")] == [
        "a",
        "aB",
        "ab",
        "aBC",
        "abc",
    ]


@pytest.mark.parametrize("kind", ["", "Camel", "snake", "dotnet", "upper_camel", "camel "])
def test_unknown_kinds_are_usage_errors(kind: str) -> None:
    with pytest.raises(InvalidInput) as bad:
        check_transformer(kind)
    assert "unknown name transformer" in bad.value.message
    for known in KINDS:
        assert known in bad.value.message
    with pytest.raises(InvalidInput):
        transform([("A", "1")], kind)


@pytest.mark.parametrize("kind", KINDS)
def test_check_transformer_returns_known_kinds(kind: str) -> None:
    assert check_transformer(kind) == kind

"""Store addresses as messages may show them: never with their password."""

REDACTED = "***"


def redact_store_url(url: str) -> str:
    """`url` with the password of its user information, and the value of any
    `password=` or `sslpassword=` (libpq's query parameters, or a key=value
    connection string given by mistake), replaced by `***`.

    A password may hold characters a URL should have encoded (`/`, `@`, `?`):
    the user information is taken to end at the last `@`, so what is hidden
    may be more than the password, never less.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    head = f"{scheme}{sep}"
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{REDACTED}{rest[at:]}"
    if "password" in rest.lower():
        import re

        rest = re.sub(
            r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&#]*)", rf"\g<1>{REDACTED}", rest
        )
    return head + rest

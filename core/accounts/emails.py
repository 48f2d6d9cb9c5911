"""The one spelling of an email address that accounts are keyed by."""

from email_validator import EmailNotValidError, validate_email


def normalise_email(value: str) -> str:
    value = value.strip()
    # ASCII only: look-alike letters from other scripts must not map to someone's account.
    if not value.isascii():
        raise ValueError("use an email address with plain ASCII characters")
    try:
        info = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as err:
        raise ValueError(str(err)) from None
    return info.normalized.lower()

"""The payments API's own errors: what Temporal or Stripe being unavailable answers."""

from api.errors import AppError, Unavailable


class TemporalDown(Unavailable):
    error = "Enrollment service unavailable"


class StripeTestModeRefused(AppError):
    """A test-mode Stripe object in production (see `Settings.accepts_stripe_mode`)."""

    error = "Test mode not accepted"

"""Offline stand-in for the part of Stripe's API the app uses (run with `python -m sandbox`)."""

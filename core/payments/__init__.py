"""Payments: the Stripe gateway, the fulfilment gate, refunds, and refund and dispute handling."""

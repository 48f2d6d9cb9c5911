"""Tests for the offline Stripe sandbox and the development mail catcher."""

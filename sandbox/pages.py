"""HTML for the hosted checkout page and its message pages (Jinja2, autoescaped)."""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import DictLoader, Environment, StrictUndefined, select_autoescape

# Currencies whose amounts have no minor unit (Stripe's list).
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "inr": "₹"}

# Nothing on these pages needs scripts, frames or third-party resources.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_BASE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %} · Stripe sandbox</title>
<style>
  body { font-family: system-ui, sans-serif; background: #f6f9fc; color: #1a1f36; margin: 0; }
  main { max-width: 28rem; margin: 2rem auto; background: #fff; padding: 1.5rem 2rem;
         border-radius: 8px; box-shadow: 0 2px 8px rgba(0,0,0,.08); }
  .banner { background: #ffde92; color: #5e3b00; text-align: center; padding: .4rem;
            font-size: .8rem; font-weight: 600; letter-spacing: .05em; }
  label { display: block; margin: .9rem 0 .3rem; font-weight: 600; font-size: .9rem; }
  input { width: 100%; box-sizing: border-box; padding: .6rem; font-size: 1rem;
          border: 1px solid #c4cdd5; border-radius: 4px; }
  input[aria-invalid="true"] { border-color: #df1b41; }
  .row { display: flex; gap: .8rem; } .row > div { flex: 1; }
  button { margin-top: 1.4rem; width: 100%; padding: .8rem; font-size: 1rem; font-weight: 600;
           background: #635bff; color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
  .error { color: #df1b41; font-weight: 600; }
  table { width: 100%; border-collapse: collapse; } td { padding: .3rem 0; }
  td.amount { text-align: right; } tr.total td { border-top: 1px solid #e3e8ee; font-weight: 700; }
  .hint { color: #697386; font-size: .8rem; }
</style>
</head>
<body>
<div class="banner" role="note">TEST MODE · offline Stripe sandbox</div>
<main>
{% block content %}{% endblock %}
</main>
</body>
</html>
"""

_CHECKOUT = """{% extends "base.html" %}
{% block title %}Pay {{ total }}{% endblock %}
{% block content %}
{% macro invalid(field) -%}
{% if error_field == field %}aria-invalid="true" aria-describedby="form-error"{% endif %}
{%- endmacro %}
<h1>Pay {{ total }}</h1>
<table aria-label="Order summary">
  {% for item in items %}
  <tr><td>{{ item.name }}{% if item.quantity > 1 %} × {{ item.quantity }}{% endif %}</td>
      <td class="amount">{{ item.amount }}</td></tr>
  {% endfor %}
  <tr class="total"><td>Total due</td><td class="amount">{{ total }}</td></tr>
</table>
<form method="post" action="{{ action }}" novalidate>
  {% if error %}<p class="error" role="alert" id="form-error">{{ error }}</p>{% endif %}
  <label for="email">Email</label>
  <input id="email" name="email" type="email" autocomplete="email" required
         value="{{ email }}"{% if email_locked %} readonly{% endif %}
         {{ invalid("email") }}>
  <label for="card_number">Card number</label>
  <input id="card_number" name="card_number" inputmode="numeric" autocomplete="cc-number"
         placeholder="1234 1234 1234 1234" required value="{{ card_number }}"
         {{ invalid("card_number") }}>
  <div class="row">
    <div>
      <label for="card_expiry">Expiration (MM / YY)</label>
      <input id="card_expiry" name="card_expiry" autocomplete="cc-exp" placeholder="MM / YY"
             required value="{{ card_expiry }}"
             {{ invalid("card_expiry") }}>
    </div>
    <div>
      <label for="card_cvc">CVC</label>
      <input id="card_cvc" name="card_cvc" inputmode="numeric" autocomplete="cc-csc"
             placeholder="CVC" required
             {{ invalid("card_cvc") }}>
    </div>
  </div>
  <label for="billing_name">Name on card</label>
  <input id="billing_name" name="billing_name" autocomplete="cc-name" value="{{ billing_name }}">
  <button type="submit">Pay {{ total }}</button>
</form>
<p class="hint">Test cards: 4242 4242 4242 4242 succeeds, 4000 0000 0000 0002 is declined,
4000 0000 0000 9995 has insufficient funds. Any future date, any 3-digit CVC.</p>
{% if cancel_url %}<p><a href="{{ cancel_url }}">Cancel and return</a></p>{% endif %}
{% endblock %}
"""

_MESSAGE = """{% extends "base.html" %}
{% block title %}{{ heading }}{% endblock %}
{% block content %}
<h1>{{ heading }}</h1>
<p role="status">{{ message }}</p>
{% if link_url %}<p><a href="{{ link_url }}">{{ link_text }}</a></p>{% endif %}
{% endblock %}
"""

_RECEIPT = """{% extends "base.html" %}
{% block title %}Receipt{% endblock %}
{% block content %}
<h1>Receipt</h1>
<dl>
  <dt>Amount paid</dt><dd>{{ amount }}</dd>
  <dt>Refunded</dt><dd>{{ refunded }}</dd>
  <dt>Date</dt><dd>{{ date }}</dd>
  <dt>Payment</dt><dd>{{ charge_id }}</dd>
</dl>
{% endblock %}
"""


@cache
def environment() -> Environment:
    return Environment(
        loader=DictLoader(
            {
                "base.html": _BASE,
                "checkout.html": _CHECKOUT,
                "message.html": _MESSAGE,
                "receipt.html": _RECEIPT,
            }
        ),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
    )


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def format_amount(amount: int, currency: str) -> str:
    currency = currency.lower()
    value = f"{amount:,}" if currency in ZERO_DECIMAL else f"{amount / 100:,.2f}"
    symbol = SYMBOLS.get(currency)
    return f"{symbol}{value}" if symbol else f"{value} {currency.upper()}"

"""Server-rendered student pages: landing, get started, payment result, dashboard, login."""

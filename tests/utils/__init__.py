"""What tests (and the bench) import by name: helpers and the reusable stack. Fixtures stay in
the conftest files."""

"""Test doubles and loopback servers for the tests and benches; production code never imports them."""

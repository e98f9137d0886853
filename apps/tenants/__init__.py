"""Tenants, their keys and scopes (``store``), and who is calling (``auth``); routes in ``routes``."""

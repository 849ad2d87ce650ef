"""Test doubles for chatrelay's upstream providers (loopback HTTP fakes)."""

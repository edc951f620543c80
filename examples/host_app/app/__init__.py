"""Example host application."""

"""Helpers for the book's chapters: interactive widgets and the exercises' check functions."""

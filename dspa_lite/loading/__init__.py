"""Settings, model profiles, and loading real models, SAEs and preference datasets (hub or local folders)."""

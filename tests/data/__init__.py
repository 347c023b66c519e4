"""Test data copied (abridged) from other projects, with their sources named."""

"""The demo kit: a demo fleet (local or real sshd nodes) and generators of realistic data."""

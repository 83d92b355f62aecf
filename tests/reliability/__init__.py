"""Reliability and safety tests (issue 6): races, crashes, server faults, hostile input, secrets."""

"""Retry policy for steps that touch the network: exponential backoff with jitter."""

import dagster as dg

NETWORK_RETRY = dg.RetryPolicy(
    max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

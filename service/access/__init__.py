"""Who may do what: API keys, rate limits, and the one access policy the API and the console share."""

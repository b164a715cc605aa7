"""The counterfeit-scan command line."""

"""Scanning: photos prepared, embedded, searched, scored and recorded; feedback on scans."""

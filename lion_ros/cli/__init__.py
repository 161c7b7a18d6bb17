"""Command-line tools: `lion-ask` (ask a question about an image file) and `lion-convert`
(official LION release -> our model directory)."""

"""What runs outside the server: partner SDK and the reference offline client."""

"""What one request may cost (size limits) and who sent it (the client's
address): decided at the edge, before any route runs."""

"""The offline sync protocol (see PROTOCOL.md once written)."""

"""tachid: the daemon process (lifecycle, connections, request dispatch)."""

"""The HTTP backend-for-frontend and static web UI."""

"""`manage.py doctor`: is this deployment wired for a call? One check per piece.

Each check returns a `Check`: ok, warn (works, but not as it should in production) or
fail (a call needs this and it is broken), what it saw, and what to do. Checks read
through the apps' selectors and the LiveKit server API (sessions_app/livekit_server.py);
they change nothing except the LiveKit probe room, which they delete.

- base.py: `Check` and its statuses
- infrastructure.py: the database, Redis, Celery, the production settings
- transport.py: the LiveKit server, its credentials, the agent worker, the webhooks (or,
  without LiveKit, the local agent host)
- agents.py: prompts, model endpoints, offline models, tool secrets
- report.py: all of them in the order a call needs them, the table row, the summary
"""

"""Live messages of the dashboard: what goes over the channel layer and the websockets.

- `messages`: the one builder of every message (and of the row, event and turn shapes
  they carry);
- `schemas`: a JSON Schema per message type (tests check every message sent against it);
- `hub`: one channel-layer subscription per process, fanned out to per-page queues that
  batch frames, and seq tracking for gap repair;
- `consumers`: the two websocket consumers (`/ws/dashboard/`, `/ws/sessions/<uuid>/`).
"""

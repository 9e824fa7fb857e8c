"""Over-the-air model updates: the registry server, its signing keys, and the device-side updater.

- ``keys``     Ed25519 keys per TUF role (root, targets, snapshot, timestamp), on disk, rotated by root.
- ``store``    the registry's state (SQLAlchemy: SQLite by default, PostgreSQL by URL) and its schema.
- ``blobs``    content-addressed artifact storage (a local folder by default).
- ``repo``     the TUF repository: signed metadata kept in the store, written in the publish transaction.
- ``plans``    a channel's rollout plan and the decision a device makes from it (shared by server and client).
- ``app``      the FastAPI application (`pocketvision serve`).
- ``publish``  export + verify + smoke records + upload (`pocketvision publish`).

The device side lives in ``pocketvision.ota.device`` and imports none of this package but ``plans``.
"""

-- lambda-api schema, version 1 (PRAGMA user_version).
-- Applied by store::open inside one transaction; every statement is idempotent.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE IF NOT EXISTS lambda_instances (
    id              TEXT PRIMARY KEY,           -- uuid
    name            TEXT NOT NULL,
    owner           TEXT NOT NULL,              -- ~okeanos user uuid
    status          TEXT NOT NULL CHECK (status IN ('STARTED', 'STOPPED', 'PENDING', 'STARTING',
                                                    'STOPPING', 'DESTROYING', 'DESTROYED', 'FAILED')),
    failure_message TEXT,
    created_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS lambda_instances_by_owner ON lambda_instances (owner, created_at);

-- The VMs of an instance: position 0 is the master, the slaves follow in order.
CREATE TABLE IF NOT EXISTS instance_servers (
    instance_id TEXT NOT NULL REFERENCES lambda_instances (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    server_id   TEXT NOT NULL,
    PRIMARY KEY (instance_id, position)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS actions (
    id          TEXT PRIMARY KEY,               -- uuid
    instance_id TEXT NOT NULL REFERENCES lambda_instances (id) ON DELETE CASCADE,
    action      TEXT NOT NULL CHECK (action IN ('start', 'stop')),
    state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,     -- how many times a worker took it up
    error       TEXT,
    -- What the worker needs to act for the owner; set only while the action is live.
    token       TEXT,
    compute_url TEXT,
    -- The current run's claim: only its holder may record steps or finish the action.
    claim       TEXT,
    lease_until INTEGER,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    CHECK ((state IN ('queued', 'running')) = (token IS NOT NULL))
);
-- At most one live action per instance, whatever the code above does.
CREATE UNIQUE INDEX IF NOT EXISTS actions_one_live_per_instance
    ON actions (instance_id) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS actions_live ON actions (state, created_at)
    WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS actions_by_instance ON actions (instance_id, created_at);

-- What a run did, VM by VM.
CREATE TABLE IF NOT EXISTS action_steps (
    action_id TEXT NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    vm        TEXT NOT NULL,
    op        TEXT NOT NULL,
    result    TEXT NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (action_id, seq)
) WITHOUT ROWID;

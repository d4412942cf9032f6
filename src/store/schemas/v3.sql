-- lambda-api schema (PRAGMA user_version says which version a database has).
-- Applied by store::open inside one transaction whenever a database is older than the binary;
-- every statement is idempotent. Version 2 added idempotency_keys. Version 3 added the
-- destroy action, actions.due_at and network_url, lambda_instances.network_id and
-- public_ip_id, and action_vms; store/mod.rs's migration rebuilds an older actions table
-- and adds the columns before this file runs (SQLite cannot change a CHECK in place).
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE IF NOT EXISTS lambda_instances (
    id              TEXT PRIMARY KEY,           -- uuid
    name            TEXT NOT NULL,
    owner           TEXT NOT NULL,              -- ~okeanos user uuid
    status          TEXT NOT NULL CHECK (status IN ('STARTED', 'STOPPED', 'PENDING', 'STARTING',
                                                    'STOPPING', 'DESTROYING', 'DESTROYED', 'FAILED')),
    failure_message TEXT,
    created_at      INTEGER NOT NULL,
    -- What destroy deletes besides the VMs: the private network and the floating IP.
    network_id      TEXT,
    public_ip_id    TEXT
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
    action      TEXT NOT NULL CHECK (action IN ('start', 'stop', 'destroy')),
    state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,     -- how many times a worker took it up
    error       TEXT,
    -- What the worker needs to act for the owner; set only while the action is live.
    token       TEXT,
    compute_url TEXT,
    network_url TEXT,                           -- the catalog's network endpoint, if any
    -- The current run's claim: only its holder may record steps or finish the action.
    claim       TEXT,
    lease_until INTEGER,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    -- When a worker should next look at a live action (a VM to read, a retry); NULL once ended.
    due_at      INTEGER,
    CHECK ((state IN ('queued', 'running')) = (token IS NOT NULL))
);
-- At most one live action per instance, whatever the code above does.
CREATE UNIQUE INDEX IF NOT EXISTS actions_one_live_per_instance
    ON actions (instance_id) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS actions_live ON actions (state, created_at)
    WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS actions_by_instance ON actions (instance_id, created_at);
CREATE INDEX IF NOT EXISTS actions_due ON actions (due_at) WHERE state IN ('queued', 'running');

-- Where a run is with each VM of its action. Phase 0 goes first (the slaves of a start, the
-- master of a stop, every VM of a destroy); phase 1 once every VM of phase 0 is done. A
-- destroy's phase 1 is the floating IP and the private network, named 'floatingip/<id>' and
-- 'network/<id>'.
CREATE TABLE IF NOT EXISTS action_vms (
    action_id TEXT NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
    vm        TEXT NOT NULL,
    position  INTEGER NOT NULL,                 -- the instance's order: 0 is the master
    phase     INTEGER NOT NULL,
    state     TEXT NOT NULL CHECK (state IN ('todo', 'waiting', 'done')),
    sent      INTEGER NOT NULL DEFAULT 0,       -- the command was sent, or found under way
    since     INTEGER,                          -- when the wait for the VM began
    next_at   INTEGER NOT NULL,                 -- when the VM is next due
    polls     INTEGER NOT NULL DEFAULT 0,       -- reads since the wait began
    tries     INTEGER NOT NULL DEFAULT 0,       -- failed tries of the current call
    PRIMARY KEY (action_id, vm)
) WITHOUT ROWID;

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

-- Answers to action calls sent with an Idempotency-Key, replayed for 24 hours.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,                  -- SHA-256 of the instance id and the action
    status      INTEGER NOT NULL,
    body        TEXT NOT NULL,
    location    TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at);

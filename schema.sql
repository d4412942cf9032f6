-- lambda-api schema, version 4 (PRAGMA user_version says which version a database has).
-- A new database is made from this file; an older one is brought here by the steps of
-- src/store/migrate.rs, and src/store/schemas/ keeps every earlier version. Version 2 added
-- idempotency_keys; version 3 the destroy action, due times and action_vms; version 4 typed
-- targets (action_targets in place of action_vms) and idempotency keys that keep the outcome
-- of their request rather than its bytes.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE IF NOT EXISTS lambda_instances (
    id              TEXT PRIMARY KEY,           -- uuid
    name            TEXT NOT NULL,
    owner           TEXT NOT NULL,              -- ~okeanos user uuid
    status          TEXT NOT NULL CHECK (status IN ('STARTED', 'STOPPED', 'PENDING', 'STARTING',
                                                    'STOPPING', 'DESTROYING', 'DESTROYED', 'FAILED')),
    failure_message TEXT,
    created_at      INTEGER NOT NULL,
    -- The private network a destroy deletes besides the VMs, if any.
    network_id      TEXT,
    -- What the owner asked for when the service created the instance (JSON): the details'
    -- instance_info. NULL for an instance registered by hand.
    info            TEXT,
    -- How the service builds it (JSON of plan::Build): what its create action makes.
    build           TEXT
);
CREATE INDEX IF NOT EXISTS lambda_instances_by_owner ON lambda_instances (owner, created_at);

-- The floating IPs a destroy deletes besides the VMs, by slot (the server slot it is for).
CREATE TABLE IF NOT EXISTS instance_floating_ips (
    instance_id    TEXT NOT NULL REFERENCES lambda_instances (id) ON DELETE CASCADE,
    slot           INTEGER NOT NULL,
    floating_ip_id TEXT NOT NULL,
    PRIMARY KEY (instance_id, slot)
) WITHOUT ROWID;

-- The VMs of an instance: position 0 is the master, the slaves follow in order. A create
-- records each VM here as soon as it is made, so a position may be missing meanwhile.
CREATE TABLE IF NOT EXISTS instance_servers (
    instance_id TEXT NOT NULL REFERENCES lambda_instances (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    server_id   TEXT NOT NULL,
    PRIMARY KEY (instance_id, position)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS actions (
    id          TEXT PRIMARY KEY,               -- uuid
    instance_id TEXT NOT NULL REFERENCES lambda_instances (id) ON DELETE CASCADE,
    action      TEXT NOT NULL CHECK (action IN ('start', 'stop', 'destroy', 'create')),
    state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,     -- how many times a worker took it up
    -- Why it failed; while a failed create is being undone (its plan a delete), already.
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

-- An action's plan, as saved when a worker first takes the action up: the things on ~okeanos
-- it acts on (its targets), phase by phase, and the command each gets. Phase 0 goes first;
-- each phase begins once every target of the one before is done. A target is named by its
-- kind and its slot (a server's place in the cluster: 0 is the master; 0 for the one
-- network, say); `target_id` is its ~okeanos id. A create that fails is undone by a new
-- plan of deletes in place of the rest of its own.
CREATE TABLE IF NOT EXISTS action_targets (
    action_id TEXT NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
    kind      TEXT NOT NULL CHECK (kind IN ('server', 'floating_ip', 'network', 'subnet')),
    slot      INTEGER NOT NULL,
    target_id TEXT,                             -- NULL while the target is still to be made
    command   TEXT NOT NULL CHECK (command IN ('start', 'shutdown', 'delete', 'create')),
    phase     INTEGER NOT NULL,
    seq       INTEGER NOT NULL,                 -- the plan's order
    state     TEXT NOT NULL CHECK (state IN ('todo', 'waiting', 'done')),
    sent      INTEGER NOT NULL DEFAULT 0,       -- the command was sent, or found under way
    since     INTEGER,                          -- when the wait for the target began
    next_at   INTEGER NOT NULL,                 -- when the target is next due
    polls     INTEGER NOT NULL DEFAULT 0,       -- reads since the wait began
    tries     INTEGER NOT NULL DEFAULT 0,       -- failed tries of the current call
    PRIMARY KEY (action_id, kind, slot)
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

-- What action calls (and creates) sent with an Idempotency-Key came to, replayed for 24
-- hours: 202 with the action, or 409 with the refusal.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,                  -- SHA-256 of the instance id and the action
    status      INTEGER NOT NULL CHECK (status IN (202, 409)),
    instance_id TEXT,                           -- the 202's instance
    action_id   TEXT,                           -- the 202's action
    base_url    TEXT,                           -- where the 202's links pointed
    message     TEXT,                           -- the 409's sentence
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at);

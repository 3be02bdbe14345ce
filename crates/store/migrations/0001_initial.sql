-- The schema as weft wrote it before the store had versions. Every
-- statement may find its object there already: a store of that time
-- adopts this version unchanged. Later versions are plain changes.

-- The rows writers lock first (see the store's module docs) come before
-- any CREATE INDEX: that takes a share lock on its table even when the
-- index exists.
CREATE TABLE IF NOT EXISTS meta (
    id BIGINT PRIMARY KEY,
    revision BIGINT NOT NULL,
    audit_seq BIGINT NOT NULL,
    audit_head TEXT NOT NULL);
INSERT INTO meta (id, revision, audit_seq, audit_head) VALUES (1, 0, 0, '')
    ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS directory_meta (
    id BIGINT PRIMARY KEY,
    revision BIGINT NOT NULL);
INSERT INTO directory_meta (id, revision) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS resources (
    path TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    parent TEXT NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS resources_kind ON resources (kind);
CREATE TABLE IF NOT EXISTS refs (
    source TEXT NOT NULL,
    field TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (source, field));
CREATE INDEX IF NOT EXISTS refs_target ON refs (target);
CREATE TABLE IF NOT EXISTS changes (
    revision BIGINT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    op TEXT NOT NULL,
    PRIMARY KEY (revision, path));
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    outcome TEXT NOT NULL,
    message TEXT NOT NULL,
    before TEXT,
    after TEXT,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    user_name TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT);
CREATE TABLE IF NOT EXISTS edge_status (
    cluster TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    reported_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS root_authorities (
    id TEXT PRIMARY KEY,
    trust_domain TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    created_at TEXT NOT NULL,
    activated_at TEXT,
    retired_at TEXT);

-- A removed item keeps its row with a NULL body (a tombstone), so edges
-- that follow changes learn it is gone.
CREATE TABLE IF NOT EXISTS directory (
    cluster TEXT NOT NULL,
    item TEXT NOT NULL,
    body TEXT,
    revision BIGINT NOT NULL,
    PRIMARY KEY (cluster, item));
CREATE INDEX IF NOT EXISTS directory_by_revision ON directory (revision);

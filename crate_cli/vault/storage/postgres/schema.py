"""The tables of a PostgreSQL store, and their forward migrations.

One store holds many orgs: every table of an org's rows carries `org_id`
(the `orgs` row), so one anchor row per org is what a writer locks. Column
types keep the rows exactly as the SQLite vault holds them, so that MACs,
AADs and digests are the same on both (storage/interface.py): integers as
bigint (never boolean), times and JSON as text, blobs as bytea, and every
text column in the "C" collation, whose order is the byte order of UTF-8 as
SQLite's BINARY is.

What SQLite's triggers do, triggers do here too: the audit log is
append-only for every role that does not own the tables (and for the owner
short of DDL), revocations and ended allowances are permanent while their org
lives, and environment snapshots are dropped as soon as what they copy changes.

The schema version is one row; migrations run under a transaction-scoped
advisory lock, so replicas starting together migrate once.

Names resolve in a fixed order, `pg_catalog`, crate's schema, `pg_temp` last:
for crate's sessions (set on every connection) and inside the trigger
functions (`SET search_path`, `@SCHEMA@` being the schema the tables are made
in), so that a function or table planted in another schema, or a temporary
table, never stands in for PostgreSQL's or crate's own. An org's tombstone is
final, so that a role that may write `orgs` cannot pretend an org deleted to
remove its permanent rows and then bring it back.
"""

SCHEMA_VERSION = 1
# pg_advisory_xact_lock's key for migrations: "crate" in ASCII.
MIGRATION_LOCK = 0x6372617465

_SCHEMA_V1 = r"""
CREATE TABLE crate_schema (
    id smallint PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
CREATE TABLE master_registry (
    id smallint PRIMARY KEY CHECK (id = 1),
    document bytea,
    updated_at text COLLATE "C" NOT NULL
);
INSERT INTO master_registry (id, document, updated_at) VALUES (1, NULL, '');
CREATE TABLE orgs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text COLLATE "C" NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    deleted_at text COLLATE "C",
    changes bigint NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX orgs_live_name ON orgs (name) WHERE deleted_at IS NULL;
CREATE TABLE org_deks (
    org_id bigint NOT NULL REFERENCES orgs (id),
    version bigint NOT NULL,
    master_version bigint NOT NULL,
    wrapped bytea NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    PRIMARY KEY (org_id, version)
);
CREATE TABLE org_rsa_keys (
    org_id bigint NOT NULL REFERENCES orgs (id),
    kid text COLLATE "C" NOT NULL,
    master_version bigint NOT NULL,
    public_der bytea NOT NULL,
    wrapped_private bytea NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    active bigint NOT NULL,
    PRIMARY KEY (org_id, kid)
);
CREATE TABLE org_audit_keys (
    org_id bigint NOT NULL REFERENCES orgs (id),
    version bigint NOT NULL,
    master_version bigint NOT NULL,
    wrapped bytea NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    PRIMARY KEY (org_id, version)
);
CREATE TABLE environments (
    org_id bigint NOT NULL REFERENCES orgs (id),
    name text COLLATE "C" NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    PRIMARY KEY (org_id, name)
);
CREATE TABLE secrets (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id bigint NOT NULL,
    env text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    deleted bigint NOT NULL,
    tags text COLLATE "C" NOT NULL,
    updated_at text COLLATE "C" NOT NULL,
    actor text COLLATE "C" NOT NULL,
    mac bytea NOT NULL,
    UNIQUE (org_id, env, name),
    FOREIGN KEY (org_id, env) REFERENCES environments (org_id, name) ON DELETE CASCADE
);
CREATE INDEX secrets_head_macs ON secrets (org_id, env, name) INCLUDE (mac);
CREATE TABLE secret_versions (
    org_id bigint NOT NULL,
    secret_id bigint NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    version bigint NOT NULL,
    action text COLLATE "C" NOT NULL,
    org_dek_version bigint,
    wrapped_dek bytea,
    ciphertext bytea,
    tags text COLLATE "C" NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    actor text COLLATE "C" NOT NULL,
    mac bytea NOT NULL,
    PRIMARY KEY (secret_id, version)
);
CREATE INDEX secret_versions_by_org_dek ON secret_versions (org_id, org_dek_version);
CREATE TABLE env_snapshots (
    org_id bigint NOT NULL,
    env text COLLATE "C" NOT NULL,
    org_dek_version bigint NOT NULL,
    wrapped_dek bytea NOT NULL,
    ciphertext bytea NOT NULL,
    PRIMARY KEY (org_id, env),
    FOREIGN KEY (org_id, env) REFERENCES environments (org_id, name) ON DELETE CASCADE
);
CREATE TABLE tokens (
    org_id bigint NOT NULL REFERENCES orgs (id),
    name text COLLATE "C" NOT NULL,
    hash bytea NOT NULL,
    role text COLLATE "C" NOT NULL,
    envs text COLLATE "C" NOT NULL,
    tags text COLLATE "C" NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    expires_at text COLLATE "C" NOT NULL,
    actor text COLLATE "C" NOT NULL,
    mac bytea NOT NULL,
    PRIMARY KEY (org_id, name),
    UNIQUE (org_id, hash)
);
CREATE TABLE token_revocations (
    org_id bigint NOT NULL REFERENCES orgs (id),
    hash bytea NOT NULL,
    name text COLLATE "C" NOT NULL,
    revoked_at text COLLATE "C" NOT NULL,
    actor text COLLATE "C" NOT NULL,
    mac bytea NOT NULL,
    PRIMARY KEY (org_id, hash)
);
CREATE TABLE allowed_names (
    org_id bigint NOT NULL REFERENCES orgs (id),
    name text COLLATE "C" NOT NULL,
    allowed_at text COLLATE "C" NOT NULL,
    actor text COLLATE "C" NOT NULL,
    mac bytea NOT NULL,
    PRIMARY KEY (org_id, name)
);
CREATE TABLE allowed_names_ended (
    org_id bigint NOT NULL REFERENCES orgs (id),
    name text COLLATE "C" NOT NULL,
    allowed_at text COLLATE "C" NOT NULL,
    ended_at text COLLATE "C" NOT NULL,
    actor text COLLATE "C" NOT NULL,
    mac bytea NOT NULL,
    PRIMARY KEY (org_id, name, allowed_at)
);
CREATE TABLE audit_log (
    org_id bigint NOT NULL REFERENCES orgs (id),
    seq bigint NOT NULL,
    time text COLLATE "C" NOT NULL,
    actor text COLLATE "C" NOT NULL,
    action text COLLATE "C" NOT NULL,
    env text COLLATE "C" NOT NULL,
    names text COLLATE "C" NOT NULL,
    outcome text COLLATE "C" NOT NULL,
    request_id text COLLATE "C" NOT NULL,
    client text COLLATE "C" NOT NULL,
    details text COLLATE "C" NOT NULL,
    mac bytea NOT NULL,
    PRIMARY KEY (org_id, seq)
);
CREATE TABLE audit_anchor (
    org_id bigint PRIMARY KEY REFERENCES orgs (id),
    seq bigint NOT NULL,
    mac bytea NOT NULL,
    enabled bigint NOT NULL,
    tag bytea NOT NULL
);
CREATE TABLE audit_pending (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id bigint NOT NULL REFERENCES orgs (id),
    time text COLLATE "C" NOT NULL,
    actor text COLLATE "C" NOT NULL,
    action text COLLATE "C" NOT NULL,
    env text COLLATE "C" NOT NULL,
    names text COLLATE "C" NOT NULL,
    outcome text COLLATE "C" NOT NULL,
    request_id text COLLATE "C" NOT NULL,
    client text COLLATE "C" NOT NULL,
    details text COLLATE "C" NOT NULL
);
CREATE TABLE write_ids (
    org_id bigint NOT NULL REFERENCES orgs (id),
    id text COLLATE "C" NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id)
);
CREATE INDEX write_ids_by_time ON write_ids (org_id, at);

CREATE FUNCTION crate_append_only() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, @SCHEMA@, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION crate_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION crate_append_only();

CREATE FUNCTION crate_permanent() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, @SCHEMA@, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM orgs WHERE id = OLD.org_id AND deleted_at IS NOT NULL
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% rows are permanent', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER token_revocations_permanent BEFORE UPDATE OR DELETE ON token_revocations
FOR EACH ROW EXECUTE FUNCTION crate_permanent();
CREATE TRIGGER allowed_names_ended_permanent BEFORE UPDATE OR DELETE ON allowed_names_ended
FOR EACH ROW EXECUTE FUNCTION crate_permanent();
CREATE TRIGGER permanent_no_truncate BEFORE TRUNCATE ON token_revocations
FOR EACH STATEMENT EXECUTE FUNCTION crate_append_only();
CREATE TRIGGER ended_no_truncate BEFORE TRUNCATE ON allowed_names_ended
FOR EACH STATEMENT EXECUTE FUNCTION crate_append_only();

CREATE FUNCTION crate_org_row() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, @SCHEMA@, pg_temp AS $$
BEGIN
    IF OLD.deleted_at IS NOT NULL OR NEW.id <> OLD.id OR NEW.name <> OLD.name THEN
        RAISE EXCEPTION 'an org''s name is fixed and its deletion final'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER orgs_tombstone_final BEFORE UPDATE ON orgs
FOR EACH ROW EXECUTE FUNCTION crate_org_row();

CREATE FUNCTION crate_snapshot_stale() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, @SCHEMA@, pg_temp AS $$
BEGIN
    IF TG_TABLE_NAME = 'org_deks' THEN
        DELETE FROM env_snapshots WHERE org_id = NEW.org_id;
    ELSIF TG_TABLE_NAME = 'secret_versions' THEN
        DELETE FROM env_snapshots s USING secrets h
        WHERE h.id = NEW.secret_id AND s.org_id = h.org_id AND s.env = h.env;
    ELSIF TG_OP = 'INSERT' THEN
        DELETE FROM env_snapshots WHERE org_id = NEW.org_id AND env = NEW.env;
    ELSIF TG_OP = 'UPDATE' THEN
        DELETE FROM env_snapshots
        WHERE (org_id = OLD.org_id AND env = OLD.env) OR (org_id = NEW.org_id AND env = NEW.env);
    ELSE
        DELETE FROM env_snapshots WHERE org_id = OLD.org_id AND env = OLD.env;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER env_snapshots_stale_secrets AFTER INSERT OR UPDATE OR DELETE ON secrets
FOR EACH ROW EXECUTE FUNCTION crate_snapshot_stale();
CREATE TRIGGER env_snapshots_stale_versions AFTER UPDATE ON secret_versions
FOR EACH ROW EXECUTE FUNCTION crate_snapshot_stale();
CREATE TRIGGER env_snapshots_stale_keys AFTER INSERT ON org_deks
FOR EACH ROW EXECUTE FUNCTION crate_snapshot_stale();
"""

# Forward migrations: MIGRATIONS[n] turns schema n into n + 1 (none yet).
MIGRATIONS: dict[int, str] = {}

# The tables of an org's rows, children first: what deleting an org clears
# (the audit log stays, append-only; the org's row stays as a tombstone).
ORG_TABLES = (
    "write_ids",
    "audit_pending",
    "audit_anchor",
    "env_snapshots",
    "secret_versions",
    "secrets",
    "environments",
    "tokens",
    "token_revocations",
    "allowed_names",
    "allowed_names_ended",
    "org_rsa_keys",
    "org_audit_keys",
    "org_deks",
)

# What `crate store grant ROLE` gives the role replicas connect as, table by
# table: the audit log only to add and read; revocations and ended
# allowances never to change (DELETE only for deleting their org, which the
# trigger checks); no DDL anywhere (only the tables' owner has it).
APP_GRANTS = {
    **dict.fromkeys(
        (
            "orgs",
            "org_deks",
            "org_rsa_keys",
            "org_audit_keys",
            "environments",
            "secrets",
            "secret_versions",
            "env_snapshots",
            "tokens",
            "allowed_names",
            "audit_anchor",
            "audit_pending",
            "write_ids",
            "master_registry",
        ),
        "SELECT, INSERT, UPDATE, DELETE",
    ),
    "token_revocations": "SELECT, INSERT, DELETE",
    "allowed_names_ended": "SELECT, INSERT, DELETE",
    "audit_log": "SELECT, INSERT",
}

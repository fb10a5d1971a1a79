//! Numbered schema migrations, the only place the schema is defined. `PRAGMA user_version` records
//! how many have been applied. Never edit an applied migration: append a new one.

use crate::error::{Result, StudioError};
use rusqlite::Connection;
use std::path::Path;

/// Migration `i` (0-based) takes the schema from version `i` to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: projects, storyboards, shots and their takes, assets, generation records, jobs.
    r#"
    CREATE TABLE projects (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );

    CREATE TABLE storyboards (
        id          INTEGER PRIMARY KEY,
        project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        title       TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE INDEX storyboards_project ON storyboards(project_id);

    CREATE TABLE assets (
        id            INTEGER PRIMARY KEY,
        sha256        TEXT NOT NULL CHECK (length(sha256) = 64),
        kind          TEXT NOT NULL CHECK (kind IN ('image', 'video', 'audio')),
        mime          TEXT NOT NULL,
        size_bytes    INTEGER NOT NULL,
        original_name TEXT NOT NULL,
        project_id    INTEGER REFERENCES projects(id) ON DELETE SET NULL,
        caption       TEXT NOT NULL DEFAULT '',
        tags          TEXT NOT NULL DEFAULT '[]',   -- JSON array of strings
        prompt        TEXT NOT NULL DEFAULT '',
        model         TEXT,
        width         INTEGER,
        height        INTEGER,
        created_at    INTEGER NOT NULL
    );
    -- One row per content per project: re-importing the same bytes returns the existing asset.
    CREATE UNIQUE INDEX assets_content ON assets(sha256, ifnull(project_id, 0));
    CREATE INDEX assets_project ON assets(project_id);

    CREATE TABLE shots (
        id              INTEGER PRIMARY KEY,
        storyboard_id   INTEGER NOT NULL REFERENCES storyboards(id) ON DELETE CASCADE,
        position        INTEGER NOT NULL,
        prompt          TEXT NOT NULL DEFAULT '',
        negative_prompt TEXT NOT NULL DEFAULT '',
        duration_s      REAL NOT NULL DEFAULT 5.0 CHECK (duration_s > 0),
        model           TEXT,
        seed            INTEGER,
        camera          TEXT NOT NULL DEFAULT '',
        transition      TEXT NOT NULL DEFAULT 'cut',
        status          TEXT NOT NULL DEFAULT 'draft'
                        CHECK (status IN ('draft', 'queued', 'generating', 'generated', 'approved', 'failed')),
        chosen_take_id  INTEGER REFERENCES takes(id) ON DELETE SET NULL,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );
    CREATE INDEX shots_storyboard ON shots(storyboard_id, position);

    -- Reference images/videos a shot is conditioned on, in order.
    CREATE TABLE shot_references (
        shot_id   INTEGER NOT NULL REFERENCES shots(id) ON DELETE CASCADE,
        asset_id  INTEGER NOT NULL REFERENCES assets(id) ON DELETE CASCADE,
        position  INTEGER NOT NULL,
        PRIMARY KEY (shot_id, asset_id)
    );

    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY,
        kind             TEXT NOT NULL,
        lane             TEXT NOT NULL CHECK (lane IN ('gpu', 'cpu')),
        params           TEXT NOT NULL,             -- JSON, as submitted
        state            TEXT NOT NULL
                         CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        progress         TEXT,                      -- JSON of the last progress event
        result           TEXT,                      -- JSON
        error            TEXT,
        project_id       INTEGER REFERENCES projects(id) ON DELETE SET NULL,
        created_at       INTEGER NOT NULL,
        started_at       INTEGER,
        finished_at      INTEGER
    );
    CREATE INDEX jobs_state ON jobs(state, lane, id);

    -- Everything needed to reproduce an output: the engine's GenerateParams as JSON, the model
    -- and the engine version that ran it.
    CREATE TABLE generations (
        id             INTEGER PRIMARY KEY,
        job_id         INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
        shot_id        INTEGER REFERENCES shots(id) ON DELETE SET NULL,
        asset_id       INTEGER REFERENCES assets(id) ON DELETE SET NULL,
        model          TEXT NOT NULL,
        params         TEXT NOT NULL,
        engine_version TEXT NOT NULL,
        created_at     INTEGER NOT NULL
    );

    -- A take is one generated output of a shot; the shot's chosen_take_id picks one.
    CREATE TABLE takes (
        id            INTEGER PRIMARY KEY,
        shot_id       INTEGER NOT NULL REFERENCES shots(id) ON DELETE CASCADE,
        asset_id      INTEGER NOT NULL REFERENCES assets(id) ON DELETE CASCADE,
        generation_id INTEGER REFERENCES generations(id) ON DELETE SET NULL,
        created_at    INTEGER NOT NULL
    );
    CREATE INDEX takes_shot ON takes(shot_id);
    "#,
    // 2: installed plugins, the capabilities granted to each, and the audit log of host calls.
    r#"
    CREATE TABLE plugins (
        id               TEXT PRIMARY KEY,
        version          TEXT NOT NULL,
        api_version      TEXT NOT NULL,
        world            TEXT NOT NULL,
        manifest         TEXT NOT NULL,             -- JSON
        component_sha256 TEXT NOT NULL CHECK (length(component_sha256) = 64),
        enabled          INTEGER NOT NULL DEFAULT 1,
        installed_at     INTEGER NOT NULL
    );

    CREATE TABLE plugin_grants (
        plugin_id   TEXT NOT NULL REFERENCES plugins(id) ON DELETE CASCADE,
        capability  TEXT NOT NULL,
        granted     INTEGER NOT NULL,
        decided_at  INTEGER NOT NULL,
        PRIMARY KEY (plugin_id, capability)
    );

    -- Kept when a plugin is removed: no foreign key on plugin_id.
    CREATE TABLE audit_log (
        id         INTEGER PRIMARY KEY,
        at         INTEGER NOT NULL,
        plugin_id  TEXT NOT NULL,
        job_id     INTEGER,
        call       TEXT NOT NULL,
        outcome    TEXT NOT NULL
    );
    CREATE INDEX audit_log_plugin ON audit_log(plugin_id, at);
    "#,
    // 3: what the plugin registry and host services need beyond migration 2: the audit log's
    // details (`call` holds `interface.function`, `outcome` is ok, denied or error), and the named
    // text documents plugins read and write per project.
    r#"
    ALTER TABLE audit_log ADD COLUMN capability TEXT;
    ALTER TABLE audit_log ADD COLUMN detail TEXT NOT NULL DEFAULT '';
    ALTER TABLE audit_log ADD COLUMN error TEXT;
    ALTER TABLE audit_log ADD COLUMN project_id INTEGER;
    CREATE INDEX audit_log_at ON audit_log(at);

    CREATE TABLE project_documents (
        project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 256),
        content     TEXT NOT NULL,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (project_id, name)
    );
    "#,
    // 4: studio-wide settings the user chose (e.g. the language model), one value per key.
    r#"
    CREATE TABLE settings (
        key         TEXT PRIMARY KEY,
        value       TEXT NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    "#,
    // 5: the agentic loop and first-party plugins. A take's review (a reviewer plugin's verdict,
    // kept beside the take and never deleting it); the shot's `attention` (why the user should
    // look: every attempt failed review) and whether the user chose its take; the project's
    // attempt limit. Plugins that come with the binary are marked, and a first-party plugin the
    // user uninstalled is remembered so that a restart does not bring it back.
    r#"
    CREATE TABLE take_reviews (
        id                      INTEGER PRIMARY KEY,
        take_id                 INTEGER NOT NULL UNIQUE REFERENCES takes(id) ON DELETE CASCADE,
        plugin_id               TEXT NOT NULL,
        verdict                 TEXT NOT NULL CHECK (verdict IN ('accept', 'retry')),
        score                   REAL NOT NULL CHECK (score BETWEEN 0 AND 1),
        reasons                 TEXT NOT NULL,
        revised_prompt          TEXT,
        revised_negative_prompt TEXT,
        attempt                 INTEGER NOT NULL CHECK (attempt >= 1),
        created_at              INTEGER NOT NULL
    );

    ALTER TABLE shots ADD COLUMN attention TEXT;
    ALTER TABLE shots ADD COLUMN chosen_by_user INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE projects ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 3
        CHECK (max_attempts BETWEEN 1 AND 10);

    ALTER TABLE plugins ADD COLUMN first_party INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE removed_first_party_plugins (
        id          TEXT PRIMARY KEY,
        removed_at  INTEGER NOT NULL
    );
    "#,
    // 6: finishing. A generation record is a model's generation or a finish of another video
    // (upscaled, interpolated, re-encoded: its params hold the finish and the models' SHA-256);
    // a finished take names the take it was finished from and the target (`4k24`).
    r#"
    ALTER TABLE generations ADD COLUMN kind TEXT NOT NULL DEFAULT 'generate'
        CHECK (kind IN ('generate', 'finish'));
    ALTER TABLE takes ADD COLUMN finished_from INTEGER REFERENCES takes(id) ON DELETE SET NULL;
    ALTER TABLE takes ADD COLUMN finish_target TEXT;
    "#,
    // 7: character looks and keyframes. A look is a reference portrait of a bible character (an
    // image asset with its generation record), one of them chosen per character; a shot's
    // keyframe is the still its image-to-video generation starts from, with the prompt the
    // expander wrote for it; a project's `keyframes` is on, off, or NULL for "when an image model
    // and an image-to-video model are installed".
    r#"
    CREATE TABLE character_looks (
        id            INTEGER PRIMARY KEY,
        storyboard_id INTEGER NOT NULL REFERENCES storyboards(id) ON DELETE CASCADE,
        character_id  TEXT NOT NULL,
        asset_id      INTEGER NOT NULL REFERENCES assets(id) ON DELETE CASCADE,
        generation_id INTEGER REFERENCES generations(id) ON DELETE SET NULL,
        chosen        INTEGER NOT NULL DEFAULT 0,
        created_at    INTEGER NOT NULL
    );
    CREATE INDEX character_looks_character ON character_looks(storyboard_id, character_id);
    CREATE UNIQUE INDEX character_looks_chosen ON character_looks(storyboard_id, character_id)
        WHERE chosen = 1;

    ALTER TABLE shots ADD COLUMN keyframe_asset_id INTEGER REFERENCES assets(id) ON DELETE SET NULL;
    ALTER TABLE shots ADD COLUMN keyframe_prompt TEXT NOT NULL DEFAULT '';
    ALTER TABLE projects ADD COLUMN keyframes INTEGER CHECK (keyframes IN (0, 1));
    "#,
    // 8: LoRAs. A LoRA is an asset of its own kind (`lora`, a safetensors file the engine read as
    // one; `lora` holds what it is: format, modules, the family its keys name, whether it adapts
    // the video or the image model). The assets table is rebuilt for the kind's CHECK (SQLite
    // cannot alter one; `apply` runs migrations with foreign keys off and checks them after).
    // LoRAs are chosen, each with a strength (and a second one for Wan 2.2's low-noise expert),
    // per project, per bible character (storyboard + character id, as looks are) or per shot;
    // deleting a chosen LoRA asset is refused (no cascade). A generation records the LoRAs it
    // applied and where each came from.
    r#"
    CREATE TABLE assets_new (
        id            INTEGER PRIMARY KEY,
        sha256        TEXT NOT NULL CHECK (length(sha256) = 64),
        kind          TEXT NOT NULL CHECK (kind IN ('image', 'video', 'audio', 'lora')),
        mime          TEXT NOT NULL,
        size_bytes    INTEGER NOT NULL,
        original_name TEXT NOT NULL,
        project_id    INTEGER REFERENCES projects(id) ON DELETE SET NULL,
        caption       TEXT NOT NULL DEFAULT '',
        tags          TEXT NOT NULL DEFAULT '[]',   -- JSON array of strings
        prompt        TEXT NOT NULL DEFAULT '',
        model         TEXT,
        width         INTEGER,
        height        INTEGER,
        created_at    INTEGER NOT NULL,
        lora          TEXT                          -- JSON, for kind 'lora'
    );
    INSERT INTO assets_new (id, sha256, kind, mime, size_bytes, original_name, project_id, caption,
                            tags, prompt, model, width, height, created_at)
        SELECT id, sha256, kind, mime, size_bytes, original_name, project_id, caption,
               tags, prompt, model, width, height, created_at FROM assets;
    DROP TABLE assets;
    ALTER TABLE assets_new RENAME TO assets;
    CREATE UNIQUE INDEX assets_content ON assets(sha256, ifnull(project_id, 0));
    CREATE INDEX assets_project ON assets(project_id);

    CREATE TABLE lora_choices (
        id            INTEGER PRIMARY KEY,
        asset_id      INTEGER NOT NULL REFERENCES assets(id),
        project_id    INTEGER REFERENCES projects(id) ON DELETE CASCADE,
        storyboard_id INTEGER REFERENCES storyboards(id) ON DELETE CASCADE,
        character_id  TEXT,
        shot_id       INTEGER REFERENCES shots(id) ON DELETE CASCADE,
        position      INTEGER NOT NULL,
        strength      REAL NOT NULL,
        strength_2    REAL,
        CHECK ((project_id IS NOT NULL)
             + (storyboard_id IS NOT NULL AND character_id IS NOT NULL)
             + (shot_id IS NOT NULL) = 1)
    );
    CREATE INDEX lora_choices_asset ON lora_choices(asset_id);
    CREATE UNIQUE INDEX lora_choices_scope ON lora_choices(
        ifnull(project_id, 0), ifnull(storyboard_id, 0), ifnull(character_id, ''),
        ifnull(shot_id, 0), asset_id);

    ALTER TABLE generations ADD COLUMN loras TEXT NOT NULL DEFAULT '[]';
    "#,
    // 9: several cards. The card a job last ran on (`cuda:1`), kept after it ends.
    r#"
    ALTER TABLE jobs ADD COLUMN card TEXT;
    "#,
    // 10: how a generation was laid out across cards (how it was computed; `params` say what):
    // the cards it was split across, whether half of them ran the unconditional guidance branch,
    // and each card's time (JSON, rank order; empty on one card). Earlier rows ran on one card,
    // except those of a split `generate` job, whose render settings and result say how.
    r#"
    ALTER TABLE generations ADD COLUMN split_cards INTEGER NOT NULL DEFAULT 1
        CHECK (split_cards >= 1);
    ALTER TABLE generations ADD COLUMN cfg_parallel INTEGER NOT NULL DEFAULT 0
        CHECK (cfg_parallel IN (0, 1));
    ALTER TABLE generations ADD COLUMN ranks TEXT NOT NULL DEFAULT '[]';
    UPDATE generations
    SET split_cards = json_array_length(jobs.result, '$.ranks'),
        cfg_parallel = json_extract(jobs.params, '$.render.cfg_parallel') IS 1,
        ranks = json_extract(jobs.result, '$.ranks')
    FROM jobs
    WHERE jobs.id = generations.job_id AND jobs.kind = 'generate'
        AND CASE WHEN json_valid(jobs.result) AND json_valid(jobs.params)
                 THEN json_type(jobs.result, '$.ranks') = 'array'
                      AND json_array_length(jobs.result, '$.ranks') > 0
                 ELSE 0 END;
    "#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the migrations `conn` lacks, each in its own transaction with the version bump.
pub(super) fn apply(conn: &Connection, path: &Path, read_only: bool) -> Result<()> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StudioError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < SCHEMA_VERSION && read_only {
        return Err(StudioError::ReadOnly(format!(
            "{} needs upgrading from schema version {found} to {SCHEMA_VERSION} but cannot be written",
            path.display()
        )));
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    // A migration that rebuilds a table (SQLite's way to change a CHECK) must not fire the
    // foreign keys' ON DELETE actions when it drops the old one: keys are off while migrating,
    // and each migration checks them before it commits. The pragma is a no-op in a transaction.
    let foreign_keys: bool = conn.pragma_query_value(None, "foreign_keys", |row| row.get(0))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    let applied = apply_each(conn, found);
    conn.pragma_update(None, "foreign_keys", foreign_keys)?;
    applied?;
    // Migrations rewrite much of the schema (a table rebuild copies a whole table): fold them
    // into the database file so the write-ahead log starts empty rather than that large.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

fn apply_each(conn: &Connection, found: i64) -> Result<()> {
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        let failed = |e: StudioError| {
            let _ = conn.execute_batch("ROLLBACK");
            match e {
                StudioError::Internal(e) => {
                    StudioError::Internal(e.context(format!("migration {version} failed")))
                }
                other => other,
            }
        };
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};"
        ))
        .map_err(|e| failed(e.into()))?;
        let dangling: i64 = conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .map_err(|e| failed(e.into()))?;
        if dangling > 0 {
            return Err(failed(StudioError::Internal(anyhow::anyhow!(
                "{dangling} rows would break foreign keys"
            ))));
        }
        conn.execute_batch("COMMIT").map_err(|e| failed(e.into()))?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

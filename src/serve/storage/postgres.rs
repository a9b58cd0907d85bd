//! The PostgreSQL + pgvector backend (`--database-url`): faces, labels and
//! photos live in the database and search uses pgvector's HNSW index, so
//! `faceall serve` processes hold no state and any number of them can
//! share one database behind a load balancer.
//!
//! The schema is created and migrated at start inside one transaction
//! under an advisory lock (servers starting together take turns). A pool
//! of connections (deadpool-postgres over tokio-postgres) is kept; when the
//! database goes away, calls fail with [`StoreError::Unavailable`] (the
//! server answers 503) and the pool reconnects once it is back.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::try_join_all;
use pgvector::Vector;
use tokio_postgres::{NoTls, Row};

use super::{
    check_dim, now, Detection, FaceRecord, Match, NewFace, PhotoFaces, Stats, Storage, StoreError,
    StoreResult, StoredPhoto, Subject,
};

/// Schema migrations, applied in order; `faceall_meta.schema_version`
/// says how many ran. `{dim}` is the model's embedding size.
const MIGRATIONS: &[&str] = &[
    "
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE faceall_images(
    id BIGSERIAL PRIMARY KEY,
    ext TEXT NOT NULL,
    bytes BYTEA NOT NULL,
    created BIGINT NOT NULL);
CREATE TABLE faceall_faces(
    id BIGSERIAL PRIMARY KEY,
    label TEXT NOT NULL,
    embedding vector({dim}) NOT NULL,
    detection REAL[],
    image_id BIGINT REFERENCES faceall_images(id),
    created BIGINT NOT NULL);
CREATE INDEX faceall_faces_image ON faceall_faces(image_id);
CREATE INDEX faceall_faces_label ON faceall_faces(label);
CREATE INDEX faceall_faces_embedding ON faceall_faces
    USING hnsw (embedding vector_l2_ops) WITH (m = 16, ef_construction = 64);
",
    "
ALTER TABLE faceall_images ADD COLUMN sha256 BYTEA;
CREATE INDEX faceall_images_sha256 ON faceall_images(sha256);
",
];

/// pgvector's `hnsw.ef_search` for every search: 100 gives identity
/// recall@5 of 0.99+ on 100k synthetic faces (scripts/bench_index; the
/// default 40 does not).
pub const EF_SEARCH: usize = 100;

/// How long a request waits for a pooled connection or a new one.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Postgres {
    pool: Pool,
    dim: usize,
}

fn db_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // Class 08: connection exception; 57P: operator intervention
        // (the server shutting down); 53: insufficient resources.
        if code.starts_with("08") || code.starts_with("57P") || code == "53300" {
            return StoreError::Unavailable(format!("database: {}", db.message()));
        }
        if code == "53100" {
            return StoreError::Full(format!("database: {}", db.message()));
        }
        return StoreError::Internal(format!("database: {} ({code})", db.message()));
    }
    if e.is_closed() || std::error::Error::source(&e).is_some() {
        return StoreError::Unavailable(format!("database: {e}"));
    }
    StoreError::Internal(format!("database: {e}"))
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_err(e),
        e => StoreError::Unavailable(format!("database: {e}")),
    }
}

fn det_floats(d: &Option<Detection>) -> Option<Vec<f32>> {
    d.map(|d| d.to_floats().to_vec())
}

fn face_of(r: &Row) -> StoreResult<FaceRecord> {
    let get = |e: tokio_postgres::Error| StoreError::Internal(format!("database row: {e}"));
    let emb: Vector = r.try_get("embedding").map_err(get)?;
    let det: Option<Vec<f32>> = r.try_get("detection").map_err(get)?;
    Ok(FaceRecord {
        id: r.try_get::<_, i64>("id").map_err(get)? as u64,
        label: r.try_get("label").map_err(get)?,
        embedding: emb.to_vec(),
        detection: det.and_then(|d| Detection::from_floats(&d)),
        image_id: r
            .try_get::<_, Option<i64>>("image_id")
            .map_err(get)?
            .map(|i| i as u64),
        created: r.try_get::<_, i64>("created").map_err(get)? as u64,
    })
}

impl Postgres {
    /// Connect (libpq URIs, `?host=/socket/dir` included), create or
    /// migrate the schema. An unreachable database or a refused login is
    /// an error here, before the server listens.
    ///
    /// `collection`: a collection other than `default` lives in the schema
    /// `faceall_c_NAME` (created here), which its connections put first on
    /// their search path; `default` uses the database's own search path.
    pub async fn open(url: &str, dim: usize, collection: Option<&str>) -> StoreResult<Self> {
        let mut cfg = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("database URL: {e}")))?;
        if let Some(name) = collection {
            let schema = quote_ident(&schema_of(name));
            // The schema must exist before a connection can use it.
            let boot = make_pool(cfg.clone(), 1)?;
            let c = boot.get().await.map_err(pool_err)?;
            c.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(db_err)?;
            drop(c);
            boot.close();
            cfg.options(format!("-c search_path={schema},public"));
        }
        let pg = Postgres {
            pool: make_pool(cfg, POOL_SIZE)?,
            dim,
        };
        pg.migrate().await?;
        Ok(pg)
    }

    /// The catalog of collections (in the default schema).
    pub(crate) async fn catalog_init(&self) -> StoreResult<()> {
        let c = self.pool.get().await.map_err(pool_err)?;
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS faceall_collections(
                name TEXT PRIMARY KEY,
                key_sha256 BYTEA NOT NULL,
                created BIGINT NOT NULL)",
        )
        .await
        .map_err(db_err)
    }

    pub(crate) async fn catalog_rows(&self) -> StoreResult<Vec<super::collections::Row>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let rows = c
            .query(
                "SELECT name, key_sha256, created FROM faceall_collections ORDER BY name",
                &[],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(super::collections::Row {
                    name: r.try_get(0).map_err(db_err)?,
                    key_sha256: r.try_get(1).map_err(db_err)?,
                    created: r.try_get::<_, i64>(2).map_err(db_err)? as u64,
                })
            })
            .collect()
    }

    pub(crate) async fn catalog_add(&self, row: &super::collections::Row) -> StoreResult<()> {
        let c = self.pool.get().await.map_err(pool_err)?;
        c.execute(
            "INSERT INTO faceall_collections(name, key_sha256, created) VALUES ($1, $2, $3)",
            &[&row.name, &row.key_sha256, &(row.created as i64)],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub(crate) async fn catalog_remove(&self, name: &str) -> StoreResult<()> {
        let c = self.pool.get().await.map_err(pool_err)?;
        c.execute("DELETE FROM faceall_collections WHERE name = $1", &[&name])
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Drop a collection's schema with its tables.
    pub(crate) async fn drop_schema(&self, name: &str) -> StoreResult<()> {
        let c = self.pool.get().await.map_err(pool_err)?;
        c.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(&schema_of(name))
        ))
        .await
        .map_err(db_err)
    }

    /// Drop the collection schemas whose collection is not in `keep`.
    pub(crate) async fn drop_orphan_schemas(&self, keep: &[String]) -> StoreResult<()> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let rows = c
            .query(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'faceall_c_')",
                &[],
            )
            .await
            .map_err(db_err)?;
        drop(c);
        for r in rows {
            let schema: String = r.try_get(0).map_err(db_err)?;
            let name = schema.trim_start_matches("faceall_c_");
            if !keep.iter().any(|k| k == name) {
                tracing::warn!("dropping schema {schema}, a collection without a catalog entry");
                self.drop_schema(name).await?;
            }
        }
        Ok(())
    }
}

/// Connections per pool (each collection has its own pool).
const POOL_SIZE: usize = 16;

fn make_pool(cfg: tokio_postgres::Config, size: usize) -> StoreResult<Pool> {
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Internal(format!("database pool: {e}")))
}

/// The schema of a collection other than `default`.
fn schema_of(name: &str) -> String {
    format!("faceall_c_{name}")
}

/// A PostgreSQL identifier in double quotes (collection names are checked
/// to letters, digits, '_' and '-', so this is belt and braces).
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Postgres {
    async fn migrate(&self) -> StoreResult<()> {
        let mut c = self.pool.get().await.map_err(pool_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        // One server at a time migrates (any constant key).
        tx.execute("SELECT pg_advisory_xact_lock(7216830551)", &[])
            .await
            .map_err(db_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS faceall_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
        .await
        .map_err(db_err)?;
        let row = tx
            .query_opt(
                "SELECT value FROM faceall_meta WHERE key = 'schema_version'",
                &[],
            )
            .await
            .map_err(db_err)?;
        let done: usize = match row {
            Some(r) => r
                .get::<_, String>(0)
                .parse()
                .map_err(|_| StoreError::Internal("faceall_meta: bad schema_version".into()))?,
            None => 0,
        };
        if done > MIGRATIONS.len() {
            return Err(StoreError::Internal(format!(
                "the database's faceall schema is version {done}, newer than this faceall's {}",
                MIGRATIONS.len()
            )));
        }
        for m in &MIGRATIONS[done..] {
            tx.batch_execute(&m.replace("{dim}", &self.dim.to_string()))
                .await
                .map_err(db_err)?;
        }
        tx.execute(
            "INSERT INTO faceall_meta(key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&MIGRATIONS.len().to_string()],
        )
        .await
        .map_err(db_err)?;
        // The dimension is part of the column type.
        let typ: Option<String> = tx
            .query_opt(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                 WHERE attrelid = 'faceall_faces'::regclass AND attname = 'embedding'",
                &[],
            )
            .await
            .map_err(db_err)?
            .map(|r| r.get(0));
        let want = format!("vector({})", self.dim);
        if typ.as_deref() != Some(want.as_str()) {
            return Err(StoreError::Internal(format!(
                "the database stores embeddings as {}, the model gives {want}",
                typ.unwrap_or_default()
            )));
        }
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }
}

const INSERT_FACE: &str =
    "INSERT INTO faceall_faces(label, embedding, detection, image_id, created)
     VALUES ($1, $2, $3, $4, $5) RETURNING id";
const FACE_COLUMNS: &str = "id, label, embedding, detection, image_id, created";

#[async_trait]
impl Storage for Postgres {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    async fn register(&self, photos: Vec<PhotoFaces>) -> StoreResult<Vec<StoredPhoto>> {
        for p in &photos {
            for f in &p.faces {
                check_dim(&f.embedding, self.dim)?;
            }
        }
        let created = now() as i64;
        let mut c = self.pool.get().await.map_err(pool_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        let ins = tx.prepare(INSERT_FACE).await.map_err(db_err)?;
        let mut out = vec![];
        for p in photos {
            let image_id: i64 = tx
                .query_one(
                    "INSERT INTO faceall_images(ext, bytes, created, sha256) VALUES ($1, $2, $3, $4) RETURNING id",
                    &[&p.ext, &p.bytes, &created, &p.sha256.as_slice()],
                )
                .await
                .map_err(db_err)?
                .get(0);
            let mut faces = vec![];
            for f in p.faces {
                let v = Vector::from(f.embedding.clone());
                let id: i64 = tx
                    .query_one(
                        &ins,
                        &[
                            &f.label,
                            &v,
                            &det_floats(&f.detection),
                            &Some(image_id),
                            &created,
                        ],
                    )
                    .await
                    .map_err(db_err)?
                    .get(0);
                faces.push(FaceRecord {
                    id: id as u64,
                    label: f.label,
                    embedding: f.embedding,
                    detection: f.detection,
                    image_id: Some(image_id as u64),
                    created: created as u64,
                });
            }
            out.push(StoredPhoto {
                image_id: image_id as u64,
                faces,
            });
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn add_embeddings(&self, faces: Vec<NewFace>) -> StoreResult<Vec<u64>> {
        for f in &faces {
            check_dim(&f.embedding, self.dim)?;
        }
        let created = now() as i64;
        let mut c = self.pool.get().await.map_err(pool_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        let ins = tx.prepare(INSERT_FACE).await.map_err(db_err)?;
        let none: Option<i64> = None;
        let rows: Vec<(Vector, &NewFace)> = faces
            .iter()
            .map(|f| (Vector::from(f.embedding.clone()), f))
            .collect();
        // Pipelined: all inserts in flight on one connection, in order.
        let no_det: Option<Vec<f32>> = None;
        let (t, ins, none, no_det, created) = (&tx, &ins, &none, &no_det, &created);
        let ids = try_join_all(rows.iter().map(|(v, f)| async move {
            t.query_one(ins, &[&f.label, v, no_det, none, created])
                .await
        }))
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(ids.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    async fn search(&self, queries: Vec<Vec<f32>>, k: usize) -> StoreResult<Vec<Vec<Match>>> {
        for q in &queries {
            check_dim(q, self.dim)?;
        }
        let mut c = self.pool.get().await.map_err(pool_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {}", EF_SEARCH.max(k)))
            .await
            .map_err(db_err)?;
        let st = tx
            .prepare(
                "SELECT id, label, embedding <-> $1 AS distance, detection, image_id
                 FROM faceall_faces ORDER BY embedding <-> $1 LIMIT $2",
            )
            .await
            .map_err(db_err)?;
        let vs: Vec<Vector> = queries.into_iter().map(Vector::from).collect();
        let limit = k as i64;
        let (t, st, limit) = (&tx, &st, &limit);
        let results = try_join_all(
            vs.iter()
                .map(|v| async move { t.query(st, &[v, limit]).await }),
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let get = |e: tokio_postgres::Error| StoreError::Internal(format!("database row: {e}"));
        results
            .into_iter()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        let det: Option<Vec<f32>> = r.try_get("detection").map_err(get)?;
                        Ok(Match {
                            id: r.try_get::<_, i64>("id").map_err(get)? as u64,
                            label: r.try_get("label").map_err(get)?,
                            distance: r.try_get::<_, f64>("distance").map_err(get)? as f32,
                            bbox: det.and_then(|d| Detection::from_floats(&d)).map(|d| d.bbox),
                            image_id: r
                                .try_get::<_, Option<i64>>("image_id")
                                .map_err(get)?
                                .map(|i| i as u64),
                        })
                    })
                    .collect()
            })
            .collect()
    }

    async fn face(&self, id: u64) -> StoreResult<Option<FaceRecord>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let r = c
            .query_opt(
                &format!("SELECT {FACE_COLUMNS} FROM faceall_faces WHERE id = $1"),
                &[&(id as i64)],
            )
            .await
            .map_err(db_err)?;
        r.as_ref().map(face_of).transpose()
    }

    async fn list(&self, offset: u64, limit: u64) -> StoreResult<(u64, Vec<FaceRecord>)> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let total: i64 = c
            .query_one("SELECT count(*) FROM faceall_faces", &[])
            .await
            .map_err(db_err)?
            .get(0);
        let rows = c
            .query(
                &format!("SELECT {FACE_COLUMNS} FROM faceall_faces ORDER BY id LIMIT $1 OFFSET $2"),
                &[&(limit as i64), &(offset as i64)],
            )
            .await
            .map_err(db_err)?;
        let faces = rows.iter().map(face_of).collect::<StoreResult<Vec<_>>>()?;
        Ok((total as u64, faces))
    }

    async fn delete(&self, id: u64) -> StoreResult<bool> {
        let mut c = self.pool.get().await.map_err(pool_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        let row = tx
            .query_opt(
                "DELETE FROM faceall_faces WHERE id = $1 RETURNING image_id",
                &[&(id as i64)],
            )
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(false);
        };
        if let Some(img) = row.get::<_, Option<i64>>(0) {
            tx.execute(
                "DELETE FROM faceall_images WHERE id = $1
                 AND NOT EXISTS (SELECT 1 FROM faceall_faces WHERE image_id = $1)",
                &[&img],
            )
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn faces_of(&self, label: &str, limit: u64) -> StoreResult<Vec<FaceRecord>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let rows = c
            .query(
                &format!(
                    "SELECT {FACE_COLUMNS} FROM faceall_faces WHERE label = $1 ORDER BY id LIMIT $2"
                ),
                &[&label, &(limit as i64)],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(face_of).collect()
    }

    async fn photo_by_hash(
        &self,
        sha256: [u8; 32],
        label: &str,
    ) -> StoreResult<Option<StoredPhoto>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let rows = c
            .query(
                &format!(
                    "SELECT {FACE_COLUMNS} FROM faceall_faces WHERE label = $1 AND image_id =
                     (SELECT i.id FROM faceall_images i WHERE i.sha256 = $2 AND EXISTS
                        (SELECT 1 FROM faceall_faces f WHERE f.image_id = i.id AND f.label = $1)
                      ORDER BY i.id LIMIT 1)
                     ORDER BY id"
                ),
                &[&label, &sha256.as_slice()],
            )
            .await
            .map_err(db_err)?;
        let faces = rows.iter().map(face_of).collect::<StoreResult<Vec<_>>>()?;
        Ok(faces
            .first()
            .and_then(|f| f.image_id)
            .map(|image_id| StoredPhoto { image_id, faces }))
    }

    async fn subjects(&self, offset: u64, limit: u64) -> StoreResult<(u64, Vec<Subject>)> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let total: i64 = c
            .query_one("SELECT count(DISTINCT label) FROM faceall_faces", &[])
            .await
            .map_err(db_err)?
            .get(0);
        let rows = c
            .query(
                "SELECT label, count(*) FROM faceall_faces GROUP BY label ORDER BY label LIMIT $1 OFFSET $2",
                &[&(limit as i64), &(offset as i64)],
            )
            .await
            .map_err(db_err)?;
        let subjects = rows
            .iter()
            .map(|r| Subject {
                label: r.get(0),
                faces: r.get::<_, i64>(1) as u64,
            })
            .collect();
        Ok((total as u64, subjects))
    }

    async fn rename_subject(&self, from: &str, to: &str) -> StoreResult<u64> {
        let c = self.pool.get().await.map_err(pool_err)?;
        c.execute(
            "UPDATE faceall_faces SET label = $2 WHERE label = $1",
            &[&from, &to],
        )
        .await
        .map_err(db_err)
    }

    async fn delete_subject(&self, label: &str) -> StoreResult<u64> {
        let mut c = self.pool.get().await.map_err(pool_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        let rows = tx
            .query(
                "DELETE FROM faceall_faces WHERE label = $1 RETURNING image_id",
                &[&label],
            )
            .await
            .map_err(db_err)?;
        let mut images: Vec<i64> = rows
            .iter()
            .filter_map(|r| r.get::<_, Option<i64>>(0))
            .collect();
        images.sort_unstable();
        images.dedup();
        if !images.is_empty() {
            tx.execute(
                "DELETE FROM faceall_images i WHERE i.id = ANY($1)
                 AND NOT EXISTS (SELECT 1 FROM faceall_faces f WHERE f.image_id = i.id)",
                &[&images],
            )
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(rows.len() as u64)
    }

    async fn image(&self, id: u64) -> StoreResult<Option<(Vec<u8>, String)>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let r = c
            .query_opt(
                "SELECT bytes, ext FROM faceall_images WHERE id = $1",
                &[&(id as i64)],
            )
            .await
            .map_err(db_err)?;
        Ok(r.map(|r| (r.get(0), r.get(1))))
    }

    async fn stats(&self) -> StoreResult<Stats> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM faceall_faces),
                        (SELECT count(DISTINCT label) FROM faceall_faces),
                        (SELECT count(*) FROM faceall_images)",
                &[],
            )
            .await
            .map_err(db_err)?;
        let faces = r.get::<_, i64>(0) as u64;
        Ok(Stats {
            faces,
            labels: r.get::<_, i64>(1) as u64,
            images: r.get::<_, i64>(2) as u64,
            // pgvector's index is maintained inside each transaction.
            indexed: faces,
            waiting: 0,
        })
    }

    async fn close(&self) -> StoreResult<()> {
        self.pool.close();
        Ok(())
    }
}

//! Collections: separate galleries in one server, each with its own
//! store and index (a face registered in one is never searched in another)
//! and its own API key.
//!
//! `default` always exists and is the store a server without collections
//! had (`--data DIR` itself, or the public schema of `--database-url`), so
//! older data stays where it was. Every other collection is a store of its
//! own: `DIR/collections/NAME/` for the embedded backend, the schema
//! `faceall_c_NAME` for PostgreSQL. The catalog (names, SHA-256 of the
//! keys, creation times) is `DIR/collections.sqlite` or the table
//! `faceall_collections`; a key is shown once, when its collection is
//! created, and only its hash is stored.
//!
//! Crash safety: a collection exists once its catalog row is committed
//! (its store is created before, so a row never points at nothing), and
//! ceases to exist when the row is deleted (its store is removed after);
//! a store without a row, left by a crash in between, is removed at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};

use super::{embedded, now, postgres, Backend, Storage, StoreError, StoreResult};

/// The collection of requests that name none.
pub const DEFAULT: &str = "default";
/// Longest collection name.
pub const MAX_NAME: usize = 48;
/// Most collections one server keeps (each holds a store and an index open).
pub const MAX_COLLECTIONS: usize = 1_000;

/// One gallery.
pub struct Collection {
    pub name: String,
    pub storage: Arc<dyn Storage>,
    /// Seconds since the Unix epoch (0 for `default`).
    pub created: u64,
    key_sha256: Option<[u8; 32]>,
}

/// A collection name is lower-case letters, digits, `_` and `-`, starting
/// with a letter or digit: safe as a folder and a schema name, and the
/// same on case-insensitive disks.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("a collection name has 1 to {MAX_NAME} characters"));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(
            "a collection name is lower-case letters, digits, '_' and '-', starting with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new API key: 32 random bytes from the operating system, as hex with a
/// recognisable prefix (secret scanners look for such prefixes).
fn new_key() -> StoreResult<String> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b)
        .map_err(|e| StoreError::Internal(format!("no randomness for a key: {e}")))?;
    Ok(format!(
        "fa_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// Where the catalog lives.
enum Catalog {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(Arc<postgres::Postgres>),
}

/// A catalog row.
pub(crate) struct Row {
    pub name: String,
    pub key_sha256: Vec<u8>,
    pub created: u64,
}

fn sql_err(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(format!("collections catalog: {e}"))
}

impl Catalog {
    async fn sqlite<T: Send + 'static>(
        c: &Arc<Mutex<rusqlite::Connection>>,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let c = c.clone();
        tokio::task::spawn_blocking(move || {
            let c = c.lock().unwrap_or_else(|e| e.into_inner());
            f(&c).map_err(sql_err)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    async fn rows(&self) -> StoreResult<Vec<Row>> {
        match self {
            Catalog::Sqlite(c) => {
                Self::sqlite(c, |c| {
                    let mut st = c.prepare(
                        "SELECT name, key_sha256, created FROM collections ORDER BY name",
                    )?;
                    let rows = st
                        .query_map([], |r| {
                            Ok(Row {
                                name: r.get(0)?,
                                key_sha256: r.get(1)?,
                                created: r.get::<_, i64>(2)? as u64,
                            })
                        })?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    Ok(rows)
                })
                .await
            }
            Catalog::Postgres(pg) => pg.catalog_rows().await,
        }
    }

    async fn add(&self, row: Row) -> StoreResult<()> {
        match self {
            Catalog::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.execute(
                        "INSERT INTO collections(name, key_sha256, created) VALUES (?1, ?2, ?3)",
                        rusqlite::params![row.name, row.key_sha256, row.created as i64],
                    )
                    .map(|_| ())
                })
                .await
            }
            Catalog::Postgres(pg) => pg.catalog_add(&row).await,
        }
    }

    async fn remove(&self, name: &str) -> StoreResult<()> {
        match self {
            Catalog::Sqlite(c) => {
                let name = name.to_string();
                Self::sqlite(c, move |c| {
                    c.execute("DELETE FROM collections WHERE name = ?1", [name])
                        .map(|_| ())
                })
                .await
            }
            Catalog::Postgres(pg) => pg.catalog_remove(name).await,
        }
    }
}

/// Every collection of a server.
pub struct Collections {
    backend: Backend,
    dim: usize,
    catalog: Catalog,
    open: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Creations and deletions one at a time.
    changing: tokio::sync::Mutex<()>,
}

fn collections_dir(base: &Path) -> PathBuf {
    base.join("collections")
}

impl Collections {
    /// Open `default` and every collection of the catalog (creating the
    /// catalog on first use), and remove stores a crash left without a row.
    pub async fn open(backend: Backend, dim: usize) -> StoreResult<Self> {
        let (default, catalog): (Arc<dyn Storage>, Catalog) = match &backend {
            Backend::Embedded(o) => {
                let store = Arc::new(embedded::Embedded::open(o.clone(), dim).await?);
                let path = o.dir.join("collections.sqlite");
                let conn = tokio::task::spawn_blocking(move || {
                    let c = rusqlite::Connection::open(&path)?;
                    c.pragma_update(None, "journal_mode", "WAL")?;
                    c.pragma_update(None, "synchronous", "FULL")?;
                    c.execute_batch(
                        "CREATE TABLE IF NOT EXISTS collections(
                            name TEXT PRIMARY KEY,
                            key_sha256 BLOB NOT NULL,
                            created INTEGER NOT NULL)",
                    )?;
                    Ok::<_, rusqlite::Error>(c)
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
                .map_err(sql_err)?;
                (store, Catalog::Sqlite(Arc::new(Mutex::new(conn))))
            }
            Backend::Postgres { url } => {
                let pg = Arc::new(postgres::Postgres::open(url, dim, None).await?);
                pg.catalog_init().await?;
                (pg.clone(), Catalog::Postgres(pg))
            }
        };
        let mut open = BTreeMap::new();
        open.insert(
            DEFAULT.to_string(),
            Arc::new(Collection {
                name: DEFAULT.into(),
                storage: default,
                created: 0,
                key_sha256: None,
            }),
        );
        let me = Collections {
            backend,
            dim,
            catalog,
            open: RwLock::new(BTreeMap::new()),
            changing: tokio::sync::Mutex::new(()),
        };
        let rows = me.catalog.rows().await?;
        for row in rows {
            if check_name(&row.name).is_err() || row.name == DEFAULT {
                return Err(StoreError::Internal(format!(
                    "the collections catalog holds a bad name '{}'",
                    row.name
                )));
            }
            let storage = me.open_store(&row.name).await?;
            let key: [u8; 32] = row.key_sha256.as_slice().try_into().map_err(|_| {
                StoreError::Internal(format!("collection '{}': bad key hash", row.name))
            })?;
            open.insert(
                row.name.clone(),
                Arc::new(Collection {
                    name: row.name,
                    storage,
                    created: row.created,
                    key_sha256: Some(key),
                }),
            );
        }
        me.remove_orphans(&open).await?;
        *me.open.write().unwrap_or_else(|e| e.into_inner()) = open;
        Ok(me)
    }

    /// The store of a collection other than `default`.
    async fn open_store(&self, name: &str) -> StoreResult<Arc<dyn Storage>> {
        Ok(match &self.backend {
            Backend::Embedded(o) => {
                let mut o = o.clone();
                o.dir = collections_dir(&o.dir).join(name);
                Arc::new(embedded::Embedded::open(o, self.dim).await?)
            }
            Backend::Postgres { url } => {
                Arc::new(postgres::Postgres::open(url, self.dim, Some(name)).await?)
            }
        })
    }

    /// Stores of collections without a catalog row (a crash during a
    /// creation or deletion).
    async fn remove_orphans(&self, open: &BTreeMap<String, Arc<Collection>>) -> StoreResult<()> {
        match (&self.backend, &self.catalog) {
            (Backend::Embedded(o), _) => {
                let dir = collections_dir(&o.dir);
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    return Ok(());
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !open.contains_key(&name) {
                        tracing::warn!(
                            "removing {}, a collection's store without a catalog entry",
                            e.path().display()
                        );
                        std::fs::remove_dir_all(e.path()).map_err(|err| {
                            StoreError::Internal(format!(
                                "cannot remove {}: {err}",
                                e.path().display()
                            ))
                        })?;
                    }
                }
                Ok(())
            }
            (_, Catalog::Postgres(pg)) => {
                let keep: Vec<String> = open.keys().cloned().collect();
                pg.drop_orphan_schemas(&keep).await
            }
            _ => Ok(()),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Collection>> {
        self.open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The default collection (always there).
    pub fn default_collection(&self) -> StoreResult<Arc<Collection>> {
        self.get(DEFAULT)
            .ok_or_else(|| StoreError::Internal("the default collection is missing".into()))
    }

    /// The collection whose key this is.
    pub fn by_key(&self, key: &str) -> Option<String> {
        let h = key_hash(key);
        self.open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|c| c.key_sha256 == Some(h))
            .map(|c| c.name.clone())
    }

    /// Every collection, by name.
    pub fn list(&self) -> Vec<Arc<Collection>> {
        self.open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Create a collection; its key (shown this once).
    pub async fn create(&self, name: &str) -> StoreResult<(Arc<Collection>, String)> {
        check_name(name).map_err(StoreError::Invalid)?;
        let _one = self.changing.lock().await;
        if self.get(name).is_some() {
            return Err(StoreError::Exists(format!(
                "a collection named '{name}' exists already"
            )));
        }
        if self.list().len() >= MAX_COLLECTIONS {
            return Err(StoreError::Invalid(format!(
                "this server keeps at most {MAX_COLLECTIONS} collections"
            )));
        }
        let key = new_key()?;
        let storage = self.open_store(name).await?;
        let row = Row {
            name: name.to_string(),
            key_sha256: key_hash(&key).to_vec(),
            created: now(),
        };
        let created = row.created;
        if let Err(e) = self.catalog.add(row).await {
            let _ = storage.close().await;
            let _ = self.remove_store(name).await;
            return Err(e);
        }
        let c = Arc::new(Collection {
            name: name.to_string(),
            storage,
            created,
            key_sha256: Some(key_hash(&key)),
        });
        self.open
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), c.clone());
        Ok((c, key))
    }

    /// Delete a collection with its faces and photos; false when there was
    /// none of that name.
    pub async fn delete(&self, name: &str) -> StoreResult<bool> {
        if name == DEFAULT {
            return Err(StoreError::Invalid(
                "the default collection cannot be deleted (delete its subjects instead)".into(),
            ));
        }
        let _one = self.changing.lock().await;
        let Some(c) = self.get(name) else {
            return Ok(false);
        };
        self.catalog.remove(name).await?;
        self.open
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Err(e) = c.storage.close().await {
            tracing::error!("closing collection '{name}': {e}");
        }
        self.remove_store(name).await?;
        Ok(true)
    }

    async fn remove_store(&self, name: &str) -> StoreResult<()> {
        match (&self.backend, &self.catalog) {
            (Backend::Embedded(o), _) => {
                let dir = collections_dir(&o.dir).join(name);
                tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StoreError::Internal(format!(
                        "cannot remove {}: {e}",
                        dir.display()
                    ))),
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
            }
            (_, Catalog::Postgres(pg)) => pg.drop_schema(name).await,
            _ => Ok(()),
        }
    }

    /// Close every store (the embedded indexes are saved).
    pub async fn close(&self) -> StoreResult<()> {
        let mut first = Ok(());
        for c in self.list() {
            if let Err(e) = c.storage.close().await {
                tracing::error!("closing collection '{}': {e}", c.name);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_as_folders_and_schemas() {
        for ok in ["default", "shop-1", "a", "team_b", "0x"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "../x", "a/b", "A", "-a", "_a", ".", "a b", "é", "a\0", "a.b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(MAX_NAME)).is_ok());
        assert!(check_name(&"a".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn keys_are_random_and_only_their_hash_matches() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
        assert_eq!(key_hash(&a), key_hash(&a.clone()));
        assert_ne!(key_hash(&a), key_hash(&b));
    }

    #[tokio::test]
    async fn collections_are_separate_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let backend = || Backend::Embedded(embedded::Options::new(dir.path()));
        let cs = Collections::open(backend(), 4).await.unwrap();
        let (c, key) = cs.create("shop").await.unwrap();
        assert!(matches!(
            cs.create("shop").await,
            Err(StoreError::Exists(_))
        ));
        let face = super::super::NewFace {
            label: "ann".into(),
            embedding: vec![1.0, 0.0, 0.0, 0.0],
            detection: None,
        };
        c.storage.add_embeddings(vec![face]).await.unwrap();
        let d = cs.default_collection().unwrap();
        assert_eq!(d.storage.stats().await.unwrap().faces, 0);
        assert_eq!(cs.by_key(&key).as_deref(), Some("shop"));
        assert_eq!(cs.by_key("fa_guess"), None);
        cs.close().await.unwrap();
        drop(cs);

        let cs = Collections::open(backend(), 4).await.unwrap();
        let c = cs.get("shop").unwrap();
        assert_eq!(c.storage.stats().await.unwrap().faces, 1);
        assert_eq!(cs.by_key(&key).as_deref(), Some("shop"));
        assert!(cs.delete("shop").await.unwrap());
        assert!(!cs.delete("shop").await.unwrap());
        assert!(cs.delete(DEFAULT).await.is_err());
        assert!(!dir.path().join("collections/shop").exists());
        cs.close().await.unwrap();
        drop(cs);
        // A store a crash left without its catalog row goes at start.
        std::fs::create_dir_all(dir.path().join("collections/stray")).unwrap();
        let cs = Collections::open(backend(), 4).await.unwrap();
        assert!(cs.get("stray").is_none());
        assert!(!dir.path().join("collections/stray").exists());
        cs.close().await.unwrap();
    }
}

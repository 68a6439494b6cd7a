//! The loader's view of the shard cache: Cache Storage (default) or OPFS (`StoreKind::Opfs`,
//! where the browser has it), behind one interface.

use super::body::BodyReader;
use super::cache::{CacheFailure, CommitRecord, ShardCache};
use super::opfs::{OpfsStore, OpfsWriter};
use super::platform::{js_message, Scope};
use js_sys::{Array, Uint8Array};

/// Where shards are cached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// Cache Storage: the shard's bytes are collected (outside wasm memory) until verified.
    #[default]
    CacheStorage,
    /// The Origin Private File System: bytes go to disk as they arrive.
    Opfs,
}

pub enum Store {
    Cache(ShardCache),
    Opfs(OpfsStore),
}

/// A shard on its way into the store.
pub enum Keep {
    /// Copies of the chunks, for Cache Storage's one `put`.
    Parts(Array),
    File(OpfsWriter),
}

impl Store {
    /// Opens the store of `kind`; OPFS falls back to Cache Storage (the note says why).
    pub(crate) async fn open(kind: StoreKind, sc: &Scope) -> Result<(Store, Option<String>), CacheFailure> {
        let mut note = None;
        if kind == StoreKind::Opfs {
            match OpfsStore::open(&sc.storage()).await {
                Ok(s) => return Ok((Store::Opfs(s), None)),
                Err(e) => note = Some(format!("OPFS unavailable ({}); caching in Cache Storage", e.message())),
            }
        }
        let storage = sc.caches().map_err(|e| CacheFailure::Other(format!("no Cache Storage here ({})", js_message(&e))))?;
        Ok((Store::Cache(ShardCache::open(&storage).await?), note))
    }

    /// A committed, verified-size entry of `url` and a reader of its bytes. An entry recorded
    /// under another hash than `want_sha256` (the manifest changed) is stale: deleted, None.
    pub(crate) async fn lookup(&self, url: &str, want_sha256: Option<&str>) -> Result<Option<(CommitRecord, Option<BodyReader>)>, CacheFailure> {
        let reader = |s: Option<web_sys::ReadableStream>| s.and_then(|s| BodyReader::new(&s));
        let hit = match self {
            Store::Cache(c) => c.lookup(url).await?.map(|(r, resp)| (r, reader(resp.body()))),
            Store::Opfs(o) => o.lookup(url).await?.map(|(r, s)| (r, reader(Some(s)))),
        };
        match hit {
            Some((record, _)) if want_sha256.is_some() && record.sha256.as_deref() != want_sha256 => {
                self.remove(url).await?;
                Ok(None)
            }
            hit => Ok(hit),
        }
    }

    pub async fn begin(&self, url: &str) -> Result<Keep, CacheFailure> {
        match self {
            Store::Cache(_) => Ok(Keep::Parts(Array::new())),
            Store::Opfs(o) => Ok(Keep::File(o.begin(url).await?)),
        }
    }

    /// Makes a verified shard an entry: the data complete first, the commit record last.
    pub async fn commit(&self, keep: Keep, record: CommitRecord) -> Result<(), CacheFailure> {
        match (self, keep) {
            (Store::Cache(c), Keep::Parts(parts)) => c.store(record, &parts).await,
            (Store::Opfs(o), Keep::File(w)) => o.commit(w, &record).await,
            _ => Err(CacheFailure::Other("a shard kept for one store committed to another".into())),
        }
    }

    pub async fn remove(&self, url: &str) -> Result<(), CacheFailure> {
        match self {
            Store::Cache(c) => c.remove(url).await,
            Store::Opfs(o) => o.remove(url).await,
        }
    }

    pub async fn list(&self) -> Result<Vec<CommitRecord>, CacheFailure> {
        match self {
            Store::Cache(c) => c.list().await,
            Store::Opfs(o) => o.list().await,
        }
    }
}

impl Keep {
    /// Adds the next chunk of the shard.
    pub async fn push(&mut self, part: &Uint8Array) -> Result<(), CacheFailure> {
        match self {
            // A copy: the chunk aliases the body reader's buffer, which the next read refills.
            Keep::Parts(a) => {
                a.push(&Uint8Array::new(part));
                Ok(())
            }
            // Consumed once the write resolves, before the next read.
            Keep::File(w) => w.write(part).await,
        }
    }

    /// Abandons the shard (an OPFS swap file is discarded).
    pub async fn discard(self) {
        if let Keep::File(w) = self {
            w.abort().await;
        }
    }
}

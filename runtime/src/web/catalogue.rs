//! The catalogue of cached models: the shards committed in every store (Cache Storage and,
//! where present, OPFS), grouped by model, and their deletion.

use super::cache::CommitRecord;
use super::platform::{js_message, scope};
use super::store::{Store, StoreKind};
use crate::loader::LoadError;
use serde::Serialize;

/// Every committed shard in the browser's caches (Cache Storage and, where present, OPFS).
pub async fn cached_shards() -> Result<Vec<CommitRecord>, LoadError> {
    let mut out = Vec::new();
    for store in stores().await? {
        out.extend(store.list().await.map_err(|e| LoadError::Cache(e.message().to_owned()))?);
    }
    Ok(out)
}

/// A model in the cache: its name (manifest or first shard URL), shards and bytes cached.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CachedModel {
    pub model: String,
    pub shards: usize,
    pub bytes: u64,
    pub urls: Vec<String>,
}

/// The cached shards grouped by model (a shard cached without a model name is its own).
pub async fn cached_models() -> Result<Vec<CachedModel>, LoadError> {
    let mut out: Vec<CachedModel> = Vec::new();
    for r in cached_shards().await? {
        let name = r.model.clone().unwrap_or_else(|| r.url.clone());
        match out.iter_mut().find(|m| m.model == name) {
            Some(m) => {
                m.shards += 1;
                m.bytes += r.bytes;
                m.urls.push(r.url);
            }
            None => out.push(CachedModel { model: name, shards: 1, bytes: r.bytes, urls: vec![r.url] }),
        }
    }
    Ok(out)
}

/// Deletes the cached copy of each of `urls` (shard URLs) from every store.
pub async fn delete_cached(urls: &[String]) -> Result<(), LoadError> {
    for store in stores().await? {
        for u in urls {
            store.remove(u).await.map_err(|e| LoadError::Cache(e.message().to_owned()))?;
        }
    }
    Ok(())
}

/// The stores this browser has: Cache Storage, then OPFS when present.
async fn stores() -> Result<Vec<Store>, LoadError> {
    let sc = scope().map_err(LoadError::Cache)?;
    let (cache, _) = Store::open(StoreKind::CacheStorage, &sc).await.map_err(|e| LoadError::Cache(e.message().to_owned()))?;
    let mut v = vec![cache];
    if let Ok((opfs @ Store::Opfs(_), _)) = Store::open(StoreKind::Opfs, &sc).await {
        v.push(opfs);
    }
    Ok(v)
}

/// The Cache Storage store (tests plant torn and corrupt entries in it).
pub async fn open_cache() -> Result<super::cache::ShardCache, LoadError> {
    let sc = scope().map_err(LoadError::Cache)?;
    let storage = sc.caches().map_err(|e| LoadError::Cache(js_message(&e)))?;
    super::cache::ShardCache::open(&storage).await.map_err(|e| LoadError::Cache(e.message().to_owned()))
}

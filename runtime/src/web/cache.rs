//! The browser cache of model shards (Cache Storage, cache "webgguf-v1").
//!
//! Each shard is two entries: the data, then a small commit record written only after the
//! data entry is complete and its bytes verified. A shard counts as cached only through its
//! commit record, which names the data entry and its size (and sha256 when known), so a torn
//! write — data without a record — is never read as valid; lookups delete such leftovers.
//! Keys: `https://webgguf-cache.invalid/v1/commit/<url>` for the record and
//! `…/v1/data/<sha256 | etag | "url">/<url>` for the data, so a shard whose manifest hash (or
//! ETag) changed is a different entry.

use super::platform::{is_dom_error, js_message};
use js_sys::{Array, Promise};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

pub const CACHE_NAME: &str = "webgguf-v1";
const KEY_BASE: &str = "https://webgguf-cache.invalid/v1/";
/// Header on data entries carrying their size.
const BYTES_HEADER: &str = "x-webgguf-bytes";

/// What is cached for one shard URL.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommitRecord {
    pub url: String,
    pub bytes: u64,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub etag: Option<String>,
    /// Cache Storage: the data entry's key (empty in OPFS).
    pub data_key: String,
    /// `Date.now()` at commit.
    pub committed_ms: f64,
    /// The model the shard belongs to (its manifest URL, or its first shard's URL).
    #[serde(default)]
    pub model: Option<String>,
}

impl CommitRecord {
    pub fn new(url: &str, bytes: u64, sha256: Option<&str>, etag: Option<&str>, model: Option<&str>) -> CommitRecord {
        CommitRecord {
            url: url.to_owned(),
            bytes,
            sha256: sha256.map(str::to_owned),
            etag: etag.map(str::to_owned),
            data_key: String::new(),
            committed_ms: js_sys::Date::now(),
            model: model.map(str::to_owned),
        }
    }
}

/// Why a cache operation failed: storage full (caching is then skipped), or anything else.
pub enum CacheFailure {
    Quota(String),
    Other(String),
}

impl CacheFailure {
    pub(crate) fn from_js(e: JsValue) -> CacheFailure {
        if is_dom_error(&e, "QuotaExceededError") {
            CacheFailure::Quota(js_message(&e))
        } else {
            CacheFailure::Other(js_message(&e))
        }
    }

    pub fn message(&self) -> &str {
        match self {
            CacheFailure::Quota(m) | CacheFailure::Other(m) => m,
        }
    }
}

async fn wait(p: Promise) -> Result<JsValue, CacheFailure> {
    JsFuture::from(p).await.map_err(CacheFailure::from_js)
}

fn commit_key(url: &str) -> String {
    format!("{KEY_BASE}commit/{}", String::from(js_sys::encode_uri_component(url)))
}

fn data_key(url: &str, sha256: Option<&str>, etag: Option<&str>) -> String {
    let tag = match (sha256, etag) {
        (Some(h), _) => format!("sha256-{h}"),
        (None, Some(e)) => format!("etag-{}", String::from(js_sys::encode_uri_component(e))),
        (None, None) => "url".to_owned(),
    };
    format!("{KEY_BASE}data/{tag}/{}", String::from(js_sys::encode_uri_component(url)))
}

pub struct ShardCache {
    cache: web_sys::Cache,
}

impl ShardCache {
    pub async fn open(storage: &web_sys::CacheStorage) -> Result<ShardCache, CacheFailure> {
        let cache = wait(storage.open(CACHE_NAME)).await?;
        Ok(ShardCache { cache: cache.unchecked_into() })
    }

    /// The committed entry of `url`, if any, with its data response. A record whose data entry
    /// is missing or of another size is torn: it is deleted and None returned. Without a record, leftover data entries of `url`
    /// (a write interrupted before its commit) are deleted.
    pub async fn lookup(&self, url: &str) -> Result<Option<(CommitRecord, web_sys::Response)>, CacheFailure> {
        let Some(record) = self.record(url).await? else {
            self.delete_data_of(url).await?;
            return Ok(None);
        };
        let hit = wait(self.cache.match_with_str(&record.data_key)).await?;
        let Some(response) = hit.dyn_into::<web_sys::Response>().ok() else {
            self.remove(url).await?;
            return Ok(None);
        };
        let size = response.headers().get(BYTES_HEADER).ok().flatten().and_then(|s| s.parse::<u64>().ok());
        if size != Some(record.bytes) {
            self.remove(url).await?;
            return Ok(None);
        }
        Ok(Some((record, response)))
    }

    async fn record(&self, url: &str) -> Result<Option<CommitRecord>, CacheFailure> {
        let hit = wait(self.cache.match_with_str(&commit_key(url))).await?;
        let Some(response) = hit.dyn_into::<web_sys::Response>().ok() else { return Ok(None) };
        let text = wait(response.text().map_err(CacheFailure::from_js)?).await?;
        // An unreadable record is treated as absent (and replaced by the next download).
        Ok(text.as_string().and_then(|t| serde_json::from_str::<CommitRecord>(&t).ok()).filter(|r| r.url == url))
    }

    /// Writes the data (`parts`: Uint8Arrays in order, `record.bytes` in all), then the record.
    pub async fn store(&self, mut record: CommitRecord, parts: &Array) -> Result<(), CacheFailure> {
        let (url, bytes) = (record.url.clone(), record.bytes);
        let url = url.as_str();
        // Replace, never mix with, an older entry.
        self.remove(url).await?;
        let key = data_key(url, record.sha256.as_deref(), record.etag.as_deref());
        let other = |e: JsValue| CacheFailure::Other(js_message(&e));
        let blob = web_sys::Blob::new_with_u8_array_sequence(parts).map_err(other)?;
        if blob.size() as u64 != bytes {
            return Err(CacheFailure::Other(format!("{url}: {} bytes collected for a shard of {bytes}", blob.size())));
        }
        let headers = web_sys::Headers::new().map_err(other)?;
        headers.set(BYTES_HEADER, &bytes.to_string()).map_err(other)?;
        headers.set("content-type", "application/octet-stream").map_err(other)?;
        let init = web_sys::ResponseInit::new();
        init.set_headers(&headers);
        let data = web_sys::Response::new_with_opt_blob_and_init(Some(&blob), &init).map_err(other)?;
        if let Err(e) = wait(self.cache.put_with_str(&key, &data)).await {
            let _ = wait(self.cache.delete_with_str(&key)).await;
            return Err(e);
        }
        record.data_key = key.clone();
        record.committed_ms = js_sys::Date::now();
        let json = serde_json::to_string(&record).map_err(|e| CacheFailure::Other(e.to_string()))?;
        let commit = web_sys::Response::new_with_opt_str(Some(&json)).map_err(other)?;
        if let Err(e) = wait(self.cache.put_with_str(&commit_key(url), &commit)).await {
            let _ = wait(self.cache.delete_with_str(&key)).await;
            return Err(e);
        }
        Ok(())
    }

    /// Deletes `url`'s record, then its data.
    pub async fn remove(&self, url: &str) -> Result<(), CacheFailure> {
        wait(self.cache.delete_with_str(&commit_key(url))).await?;
        self.delete_data_of(url).await
    }

    async fn delete_data_of(&self, url: &str) -> Result<(), CacheFailure> {
        let suffix = format!("/{}", String::from(js_sys::encode_uri_component(url)));
        let prefix = format!("{KEY_BASE}data/");
        for key in self.keys().await? {
            if key.starts_with(&prefix) && key.ends_with(&suffix) {
                wait(self.cache.delete_with_str(&key)).await?;
            }
        }
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<String>, CacheFailure> {
        let requests: Array = wait(self.cache.keys()).await?.unchecked_into();
        Ok(requests.iter().filter_map(|r| r.dyn_into::<web_sys::Request>().ok()).map(|r| r.url()).collect())
    }

    /// Every committed shard.
    pub async fn list(&self) -> Result<Vec<CommitRecord>, CacheFailure> {
        let prefix = format!("{KEY_BASE}commit/");
        let mut out = Vec::new();
        for key in self.keys().await? {
            if let Some(enc) = key.strip_prefix(&prefix) {
                let url = js_sys::decode_uri_component(enc).ok().map(String::from).unwrap_or_default();
                if let Some(r) = self.record(&url).await? {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Puts a data entry with no commit record: what an interrupted write leaves (tests).
    pub async fn store_uncommitted(&self, url: &str, body: &[u8]) -> Result<(), CacheFailure> {
        let other = |e: JsValue| CacheFailure::Other(js_message(&e));
        let init = web_sys::ResponseInit::new();
        let headers = web_sys::Headers::new().map_err(other)?;
        headers.set(BYTES_HEADER, &body.len().to_string()).map_err(other)?;
        init.set_headers(&headers);
        let mut copy = body.to_vec();
        let data = web_sys::Response::new_with_opt_u8_array_and_init(Some(&mut copy), &init).map_err(other)?;
        wait(self.cache.put_with_str(&data_key(url, None, None), &data)).await?;
        Ok(())
    }
}

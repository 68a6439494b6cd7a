//! The shard cache in the Origin Private File System (opt-in: `LoadOptions::store`).
//!
//! Directory `webgguf-v1/`; per shard URL (named by the sha256 of the URL) a data file
//! `<h>.data` written chunk by chunk while the shard downloads, so no copy waits in memory — a
//! `FileSystemWritableFileStream` writes to a swap file that replaces `<h>.data` only at
//! `close()` — then the commit record `<h>.json` ([`CommitRecord`]), written last. Without a record
//! (a crash between the two) the data file is deleted at the next lookup, never read.

use super::cache::{CacheFailure, CommitRecord};
use super::platform::{is_dom_error, js_message};
use crate::loader::manifest::hex;
use js_sys::{Promise, Reflect, Uint8Array};
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

const DIR: &str = "webgguf-v1";

async fn wait(p: Promise) -> Result<JsValue, CacheFailure> {
    JsFuture::from(p).await.map_err(CacheFailure::from_js)
}

fn name_of(url: &str) -> String {
    hex(&Sha256::digest(url.as_bytes()))
}

pub struct OpfsStore {
    dir: web_sys::FileSystemDirectoryHandle,
}

/// A shard being written: bytes so far go to the swap file of `<h>.data`.
pub struct OpfsWriter {
    stream: web_sys::FileSystemWritableFileStream,
    name: String,
}

impl OpfsStore {
    /// `navigator.storage.getDirectory()`; an error where OPFS is missing.
    pub async fn open(storage: &web_sys::StorageManager) -> Result<OpfsStore, CacheFailure> {
        if Reflect::get(storage, &"getDirectory".into()).map_or(true, |f| f.is_undefined()) {
            return Err(CacheFailure::Other("no Origin Private File System here".into()));
        }
        let root: web_sys::FileSystemDirectoryHandle = wait(storage.get_directory()).await?.unchecked_into();
        let opts = web_sys::FileSystemGetDirectoryOptions::new();
        opts.set_create(true);
        let dir = wait(root.get_directory_handle_with_options(DIR, &opts)).await?.unchecked_into();
        Ok(OpfsStore { dir })
    }

    async fn file(&self, name: &str) -> Result<Option<web_sys::File>, CacheFailure> {
        match JsFuture::from(self.dir.get_file_handle(name)).await {
            Ok(h) => {
                let h: web_sys::FileSystemFileHandle = h.unchecked_into();
                Ok(Some(wait(h.get_file()).await?.unchecked_into()))
            }
            Err(e) if is_dom_error(&e, "NotFoundError") => Ok(None),
            Err(e) => Err(CacheFailure::from_js(e)),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), CacheFailure> {
        match JsFuture::from(self.dir.remove_entry(name)).await {
            Ok(_) => Ok(()),
            Err(e) if is_dom_error(&e, "NotFoundError") => Ok(()),
            Err(e) => Err(CacheFailure::from_js(e)),
        }
    }

    async fn record(&self, url: &str) -> Result<Option<CommitRecord>, CacheFailure> {
        let Some(f) = self.file(&format!("{}.json", name_of(url))).await? else { return Ok(None) };
        let text = wait(f.text()).await?;
        Ok(text.as_string().and_then(|t| serde_json::from_str::<CommitRecord>(&t).ok()).filter(|r| r.url == url))
    }

    /// The committed entry of `url` (its record and data stream); torn or wrong-sized entries
    /// are deleted and None returned (see `ShardCache::lookup`).
    pub async fn lookup(&self, url: &str) -> Result<Option<(CommitRecord, web_sys::ReadableStream)>, CacheFailure> {
        let Some(record) = self.record(url).await? else {
            self.remove(url).await?;
            return Ok(None);
        };
        match self.file(&format!("{}.data", name_of(url))).await? {
            Some(f) if f.size() as u64 == record.bytes => Ok(Some((record, f.stream()))),
            _ => {
                self.remove(url).await?;
                Ok(None)
            }
        }
    }

    /// Starts writing `url`'s data (its old entry, if any, deleted first).
    pub async fn begin(&self, url: &str) -> Result<OpfsWriter, CacheFailure> {
        self.remove(url).await?;
        let name = name_of(url);
        let opts = web_sys::FileSystemGetFileOptions::new();
        opts.set_create(true);
        let h: web_sys::FileSystemFileHandle = wait(self.dir.get_file_handle_with_options(&format!("{name}.data"), &opts)).await?.unchecked_into();
        let stream = wait(h.create_writable()).await?.unchecked_into();
        Ok(OpfsWriter { stream, name })
    }

    /// Closes the data file (making it visible whole), then writes the commit record.
    pub async fn commit(&self, w: OpfsWriter, record: &CommitRecord) -> Result<(), CacheFailure> {
        wait(w.stream.close()).await?;
        let json = serde_json::to_string(record).map_err(|e| CacheFailure::Other(e.to_string()))?;
        let opts = web_sys::FileSystemGetFileOptions::new();
        opts.set_create(true);
        let h: web_sys::FileSystemFileHandle = wait(self.dir.get_file_handle_with_options(&format!("{}.json", w.name), &opts)).await?.unchecked_into();
        let s: web_sys::FileSystemWritableFileStream = wait(h.create_writable()).await?.unchecked_into();
        let other = |e: JsValue| CacheFailure::Other(js_message(&e));
        wait(s.write_with_str(&json).map_err(other)?).await?;
        if let Err(e) = wait(s.close()).await {
            let _ = self.delete(&format!("{}.data", w.name)).await;
            return Err(e);
        }
        Ok(())
    }

    /// Deletes `url`'s record, then its data.
    pub async fn remove(&self, url: &str) -> Result<(), CacheFailure> {
        let name = name_of(url);
        self.delete(&format!("{name}.json")).await?;
        self.delete(&format!("{name}.data")).await
    }

    /// Every committed shard.
    pub async fn list(&self) -> Result<Vec<CommitRecord>, CacheFailure> {
        let it = self.dir.keys();
        let mut out = Vec::new();
        loop {
            let next = wait(it.next().map_err(CacheFailure::from_js)?).await?;
            if Reflect::get(&next, &"done".into()).ok().and_then(|d| d.as_bool()) == Some(true) {
                break;
            }
            let Some(name) = Reflect::get(&next, &"value".into()).ok().and_then(|v| v.as_string()) else { continue };
            if let Some(stem) = name.strip_suffix(".json") {
                if let Some(f) = self.file(&name).await? {
                    let text = wait(f.text()).await?;
                    let rec = text.as_string().and_then(|t| serde_json::from_str::<CommitRecord>(&t).ok());
                    if let Some(r) = rec.filter(|r| name_of(&r.url) == stem) {
                        out.push(r);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl OpfsWriter {
    /// Appends a chunk (a full disk is `CacheFailure::Quota`).
    pub async fn write(&mut self, chunk: &Uint8Array) -> Result<(), CacheFailure> {
        let p = self.stream.write_with_js_u8_array(chunk).map_err(CacheFailure::from_js)?;
        wait(p).await.map(|_| ())
    }

    /// Drops what was written (the data file keeps its previous content, if any).
    pub async fn abort(self) {
        let _ = JsFuture::from(self.stream.abort()).await;
    }
}

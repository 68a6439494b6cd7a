//! Loading a model over fetch in the browser: shards stream from the network (or the cache)
//! through [`ModelStream`] into the backend's memory — GPU buffers, or the CPU backend's — so wasm
//! memory holds only the header, one network chunk and the backend's staging window.
//!
//! Per shard: a committed cache entry is read if there is one; otherwise the shard is fetched,
//! each response checked (status, Content-Range, length, GGUF magic); a connection that fails or
//! ends early is resumed with `Range: bytes=<next>-` after a backoff, at most `max_attempts`
//! times without progress; a server that ignores Range (200 to a range request) is read from the
//! start with the bytes already received discarded. The sha256 from the manifest is checked at
//! the shard's end, before the shard is cached.

use super::body::Read;
use super::cache::{CacheFailure, CommitRecord};
use super::platform::{get_f64, js_message, scope, Scope};
use super::store::{Keep, Store, StoreKind};
use crate::gguf::GgufModel;
use crate::loader::manifest::{hex, Manifest, MAX_MANIFEST_BYTES};
use crate::loader::{LoadError, ModelStream};
use crate::model::{Backend, Model};
use js_sys::Uint8Array;
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasm_bindgen_futures::JsFuture;
use web_time::Instant;

// The cached-model catalogue lives beside the store (`web/catalogue.rs`); its old paths stay.
pub use super::catalogue::{cached_models, cached_shards, delete_cached, open_cache, CachedModel};

pub(super) mod download;
use download::{fetch, net_err, request};

/// Where a model comes from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    /// One `.gguf`; a name `…-00001-of-0000N.gguf` stands for all N shards of a split.
    Url(String),
    /// Every shard, in split order.
    Urls(Vec<String>),
    /// A `manifest.json` written by `webgguf shard`.
    Manifest(String),
}

/// One shard to load.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardSpec {
    pub url: String,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
}

pub struct LoadOptions {
    /// Read and write the shard cache.
    pub use_cache: bool,
    /// Which browser storage caches shards.
    pub store: StoreKind,
    /// Consecutive failed attempts (fetch or body errors without progress) before giving up.
    pub max_attempts: u32,
    /// First retry delay; doubles each retry.
    pub retry_delay_ms: i32,
    /// A response or body that delivers nothing for this long counts as a failed attempt
    /// (the body is cancelled and the shard resumed): a stalled server never hangs a load.
    pub stall_timeout_ms: i32,
    pub signal: Option<web_sys::AbortSignal>,
    /// Cache a model only when it fits in this many bytes (besides the storage quota).
    pub max_cache_bytes: Option<u64>,
    /// Fail with `LoadError::Quota` when the model cannot be cached (instead of loading it
    /// uncached): for apps that must work offline afterwards.
    pub require_cache: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            use_cache: true,
            store: StoreKind::CacheStorage,
            max_attempts: 5,
            retry_delay_ms: 200,
            stall_timeout_ms: 30_000,
            signal: None,
            max_cache_bytes: None,
            require_cache: false,
        }
    }
}

/// A progress event. `phase`: "shard" when a shard begins; then, while its bytes arrive,
/// "download" (from the network) or "cache" (from the cache store), at most every 100 ms and
/// once at the shard's end; "ready" once at the end of the load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Progress {
    pub phase: &'static str,
    /// Shard being read (0-based) and how many there are.
    pub shard: usize,
    pub shards: usize,
    pub url: String,
    /// Bytes of the model received so far, and in all (when the sizes are known).
    pub loaded: u64,
    pub total: Option<u64>,
    pub from_cache: u64,
    pub from_network: u64,
    /// Network bytes per second so far, and the time left at that rate.
    pub rate_bytes_per_s: f64,
    pub eta_s: Option<f64>,
    /// Set at "ready".
    pub report: Option<LoadReport>,
}

/// How a load went.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LoadReport {
    pub bytes: u64,
    pub from_cache: u64,
    pub from_network: u64,
    /// Network bytes received but not used (a server that ignored Range sent them again).
    pub discarded: u64,
    /// Requests that resumed a shard after a failure.
    pub resumes: u32,
    /// Shards written to the cache by this load.
    pub cached_now: usize,
    /// Why shards were not cached (storage full, no Cache Storage…), if they were not.
    pub cache_note: Option<String>,
    pub ms_total: f64,
    /// Waiting for the network, reading the cache, and in the backend (repack + upload).
    pub ms_network: f64,
    pub ms_cache: f64,
    pub ms_upload: f64,
}

/// The shards `source` stands for (fetches the manifest).
pub async fn resolve(source: &ModelSource, opts: &LoadOptions) -> Result<Vec<ShardSpec>, LoadError> {
    let spec = |url: String| -> Result<ShardSpec, LoadError> { Ok(ShardSpec { url: absolute(&url, None)?, bytes: None, sha256: None }) };
    match source {
        ModelSource::Urls(v) => v.iter().cloned().map(spec).collect(),
        ModelSource::Url(u) => split_names(u).unwrap_or_else(|| vec![u.clone()]).into_iter().map(spec).collect(),
        ModelSource::Manifest(url) => {
            let url = &absolute(url, None)?;
            let sc = scope().map_err(LoadError::Cache)?;
            let req = request(url, None, opts)?;
            let resp = fetch(&sc, &req, url, opts).await?;
            if !resp.ok() {
                return Err(LoadError::Http { url: url.clone(), status: resp.status(), detail: String::new() });
            }
            let body = JsFuture::from(resp.array_buffer().map_err(|e| net_err(url, 1, 0, &e))?).await.map_err(|e| net_err(url, 1, 0, &e))?;
            let bytes = Uint8Array::new(&body);
            if bytes.length() as usize > MAX_MANIFEST_BYTES {
                return Err(crate::loader::manifest::ManifestError::TooLarge(bytes.length() as usize).into());
            }
            let m = Manifest::parse(&bytes.to_vec())?;
            m.shards.iter().map(|s| Ok(ShardSpec { url: absolute(&s.file, Some(url))?, bytes: Some(s.bytes), sha256: s.sha256.clone() })).collect()
        }
    }
}

/// `url` made absolute against `base`, or else the page's (or worker's) location: cache keys
/// and manifest-relative shard names need absolute URLs.
fn absolute(url: &str, base: Option<&str>) -> Result<String, LoadError> {
    let location = || {
        let loc = js_sys::Reflect::get(&js_sys::global(), &"location".into()).ok()?;
        js_sys::Reflect::get(&loc, &"href".into()).ok()?.as_string()
    };
    let base = base.map(str::to_owned).or_else(location);
    let parsed = match &base {
        Some(b) => web_sys::Url::new_with_base(url, b),
        None => web_sys::Url::new(url),
    };
    parsed.map(|u| u.href()).map_err(|e| LoadError::Http { url: url.to_owned(), status: 0, detail: format!(" (not a valid URL: {})", js_message(&e)) })
}

/// `…-00001-of-0000N.gguf` → the N shard names (llama.cpp's split naming).
pub fn split_names(url: &str) -> Option<Vec<String>> {
    let stem = url.strip_suffix(".gguf")?;
    let (head, count) = stem.rsplit_once("-of-")?;
    let (base, first) = head.rsplit_once('-')?;
    if first != "00001" || count.len() != 5 || !count.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: usize = count.parse().ok().filter(|&n| n >= 1)?;
    Some((1..=n).map(|i| format!("{base}-{i:05}-of-{count}.gguf")).collect())
}

pub(super) fn aborted(opts: &LoadOptions) -> bool {
    opts.signal.as_ref().is_some_and(|s| s.aborted())
}

/// Loader state shared across shards.
struct Run<'a, B: Backend> {
    sc: Scope,
    opts: &'a LoadOptions,
    stream: ModelStream<B>,
    cache: Option<Store>,
    report: LoadReport,
    total: Option<u64>,
    shards: usize,
    t0: Instant,
    last_progress: f64,
    /// `[<= one network chunk]` reused copy buffer
    buf: Vec<u8>,
    /// What cache records name as the model: the manifest URL or the first shard's.
    model: String,
}

/// Loads the model `source` names onto `backend`, calling `progress` as bytes arrive.
pub async fn load_model<B: Backend>(
    source: &ModelSource,
    backend: &mut B,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(GgufModel, Model<B>, LoadReport), LoadError> {
    let specs = resolve(source, opts).await?;
    let key = model_key(source, &specs);
    match load_shards(&specs, &key, backend, opts, progress).await {
        // A cache entry that proved corrupt was deleted: the network has the truth.
        Err(ShardFailure::CorruptCache(why)) => {
            let (gguf, model, mut report) = load_shards(&specs, &key, backend, opts, progress).await.map_err(ShardFailure::into_error)?;
            report.cache_note.get_or_insert_with(|| why.to_string());
            Ok((gguf, model, report))
        }
        r => r.map_err(ShardFailure::into_error),
    }
}

enum ShardFailure {
    Load(LoadError),
    CorruptCache(LoadError),
}

impl ShardFailure {
    fn into_error(self) -> LoadError {
        match self {
            ShardFailure::Load(e) | ShardFailure::CorruptCache(e) => e,
        }
    }
}

impl From<LoadError> for ShardFailure {
    fn from(e: LoadError) -> Self {
        ShardFailure::Load(e)
    }
}

/// The name cache records give a model: its manifest URL, else its first shard's URL.
fn model_key(source: &ModelSource, specs: &[ShardSpec]) -> String {
    match source {
        ModelSource::Manifest(url) => url.clone(),
        _ => specs.first().map(|s| s.url.clone()).unwrap_or_default(),
    }
}

async fn load_shards<B: Backend>(
    specs: &[ShardSpec],
    model_key: &str,
    backend: &mut B,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(GgufModel, Model<B>, LoadReport), ShardFailure> {
    let sc = scope().map_err(LoadError::Cache)?;
    let total = specs.iter().map(|s| s.bytes).sum::<Option<u64>>();
    let mut run = Run {
        sc,
        opts,
        stream: ModelStream::default(),
        cache: None,
        report: LoadReport::default(),
        total,
        shards: specs.len(),
        t0: Instant::now(),
        last_progress: f64::NEG_INFINITY,
        buf: Vec::new(),
        model: model_key.to_owned(),
    };
    if opts.use_cache {
        run.open_cache(total).await;
        run.check_required()?;
    }
    for (i, spec) in specs.iter().enumerate() {
        if aborted(opts) {
            return Err(LoadError::Aborted.into());
        }
        run.shard(i, spec, backend, progress).await?;
        run.check_required()?;
    }
    let t = Instant::now();
    let Run { stream, mut report, t0, shards, .. } = run;
    let (gguf, model) = stream.finish()?;
    report.ms_upload += ms(t);
    report.ms_total = ms(t0);
    let done = Progress {
        phase: "ready",
        shard: shards.saturating_sub(1),
        shards,
        loaded: report.bytes,
        total: Some(report.bytes),
        from_cache: report.from_cache,
        from_network: report.from_network,
        report: Some(report.clone()),
        ..Progress::default()
    };
    progress(&done);
    Ok((gguf, model, report))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl<B: Backend> Run<'_, B> {
    /// Opens the cache, asks for persistent storage once, and notes why caching is off if it is.
    async fn open_cache(&mut self, total: Option<u64>) {
        match Store::open(self.opts.store, &self.sc).await {
            Ok((store, note)) => {
                self.cache = Some(store);
                self.report.cache_note = note;
            }
            Err(e) => {
                self.report.cache_note = Some(format!("cache unavailable: {}", e.message()));
                return;
            }
        }
        let manager = self.sc.storage();
        if let Ok(p) = manager.persisted() {
            if JsFuture::from(p).await.ok().and_then(|v| v.as_bool()) == Some(false) {
                if let Ok(p) = manager.persist() {
                    let _ = JsFuture::from(p).await;
                }
            }
        }
        // Downloading what cannot be stored would only evict it again: check room first.
        let Some(total) = total else { return };
        if let Some(limit) = self.opts.max_cache_bytes.filter(|&l| l < total) {
            self.cache = None;
            self.report.cache_note = Some(format!("not cached: the model needs {total} bytes, over the {limit} allowed"));
            return;
        }
        if let Ok(p) = manager.estimate() {
            if let Ok(est) = JsFuture::from(p).await {
                if let (Some(quota), Some(usage)) = (get_f64(&est, "quota"), get_f64(&est, "usage")) {
                    let free = (quota - usage).max(0.0) as u64;
                    if free < total {
                        self.cache = None;
                        self.report.cache_note = Some(format!("not cached: the model needs {total} bytes, storage has {free} free"));
                    }
                }
            }
        }
    }

    /// Reports progress in `phase` (see [`Progress`]); unless `force`, at most every 100 ms.
    fn emit(&mut self, phase: &'static str, i: usize, url: &str, progress: &mut dyn FnMut(&Progress), force: bool) {
        let now = ms(self.t0);
        if !force && now - self.last_progress < 100.0 {
            return;
        }
        self.last_progress = now;
        let rate = if self.report.ms_network > 0.0 { self.report.from_network as f64 / (self.report.ms_network / 1e3) } else { 0.0 };
        let loaded = self.stream.bytes_fed();
        let eta_s = self.total.filter(|_| rate > 0.0).map(|t| t.saturating_sub(loaded) as f64 / rate);
        progress(&Progress {
            phase,
            shard: i,
            shards: self.shards,
            url: url.to_owned(),
            loaded,
            total: self.total,
            from_cache: self.report.from_cache,
            from_network: self.report.from_network,
            rate_bytes_per_s: rate,
            eta_s,
            report: None,
        });
    }

    /// Hands a chunk (less its first `skip` bytes) to the model stream and the hash; returns
    /// the part used, for the cache.
    fn feed(&mut self, backend: &mut B, chunk: &Uint8Array, skip: u64, hash: &mut Option<Sha256>) -> Result<Option<Uint8Array>, LoadError> {
        let n = chunk.length() as usize;
        let skip = (skip as usize).min(n);
        if skip == n {
            return Ok(None);
        }
        let part = if skip > 0 { chunk.subarray(skip as u32, n as u32) } else { chunk.clone() };
        self.buf.resize(n - skip, 0);
        part.copy_to(&mut self.buf);
        let t = Instant::now();
        self.stream.feed(backend, &self.buf)?;
        self.report.ms_upload += ms(t);
        if let Some(h) = hash {
            h.update(&self.buf);
        }
        Ok(Some(part))
    }

    async fn shard(&mut self, i: usize, spec: &ShardSpec, backend: &mut B, progress: &mut dyn FnMut(&Progress)) -> Result<(), ShardFailure> {
        let url = spec.url.as_str();
        self.stream.begin_shard(url, spec.bytes)?;
        self.emit("shard", i, url, progress, true);
        let mut hash = spec.sha256.as_ref().map(|_| Sha256::new());
        if self.read_cached(i, spec, backend, &mut hash, progress).await? {
            return Ok(());
        }
        let mut keep = match &self.cache {
            Some(c) => match c.begin(url).await {
                Ok(k) => Some(k),
                Err(e) => {
                    self.cache_failed(e);
                    None
                }
            },
            None => None,
        };
        let got = self.download_and_check(i, spec, backend, hash, &mut keep, progress).await;
        match (got, keep) {
            (Ok((bytes, etag)), Some(k)) => {
                if let Some(c) = &self.cache {
                    let record = CommitRecord::new(url, bytes, spec.sha256.as_deref(), etag.as_deref(), Some(&self.model));
                    match c.commit(k, record).await {
                        Ok(()) => self.report.cached_now += 1,
                        Err(e) => self.cache_failed(e),
                    }
                }
            }
            (Ok(_), None) => {}
            (Err(e), keep) => {
                // Nothing unverified reaches the cache.
                if let Some(k) = keep {
                    k.discard().await;
                }
                return Err(e.into());
            }
        }
        self.emit("download", i, url, progress, true);
        Ok(())
    }

    /// Fetches the shard, checks its sha256 and ends it in the model stream: its size and ETag.
    async fn download_and_check(
        &mut self,
        i: usize,
        spec: &ShardSpec,
        backend: &mut B,
        mut hash: Option<Sha256>,
        keep: &mut Option<Keep>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<(u64, Option<String>), LoadError> {
        let url = spec.url.as_str();
        let etag = self.download(i, spec, backend, &mut hash, keep, progress).await?;
        let t = Instant::now();
        let bytes = self.stream.shard_pos();
        if let (Some(want), Some(h)) = (&spec.sha256, hash) {
            let found = hex(&h.finalize());
            if &found != want {
                if let Some(c) = &self.cache {
                    let _ = c.remove(url).await;
                }
                return Err(LoadError::Integrity { url: url.to_owned(), expected: want.clone(), found });
            }
        }
        self.stream.end_shard(backend)?;
        self.report.ms_upload += ms(t);
        Ok((bytes, etag))
    }

    /// With `require_cache`, caching turned off (no storage, full, over budget) fails the load.
    fn check_required(&self) -> Result<(), LoadError> {
        if self.opts.use_cache && self.opts.require_cache && self.cache.is_none() {
            let why = self.report.cache_note.clone().unwrap_or_else(|| "no cache".into());
            return Err(LoadError::Quota(why));
        }
        Ok(())
    }

    /// Notes why a shard was not cached; a full storage stops caching for this load.
    fn cache_failed(&mut self, e: CacheFailure) {
        match e {
            CacheFailure::Quota(m) => {
                self.report.cache_note = Some(format!("storage full, not cached: {m}"));
                self.cache = None;
            }
            CacheFailure::Other(m) => self.report.cache_note = Some(format!("not cached: {m}")),
        }
    }

    /// Streams a committed cache entry, if there is one. A read error, a short entry or a hash
    /// mismatch deletes it and fails with `CorruptCache` (the load then restarts from the network).
    async fn read_cached(
        &mut self,
        i: usize,
        spec: &ShardSpec,
        backend: &mut B,
        hash: &mut Option<Sha256>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<bool, ShardFailure> {
        let Some(cache) = &self.cache else { return Ok(false) };
        let url = spec.url.as_str();
        let t = Instant::now();
        let hit = cache.lookup(url, spec.sha256.as_deref()).await;
        self.report.ms_cache += ms(t);
        let Ok(Some((record, reader))) = hit else { return Ok(false) };
        let corrupt = |why: String| ShardFailure::CorruptCache(LoadError::Cache(format!("{url}: cached copy {why}; deleted")));
        let Some(mut reader) = reader else {
            let _ = cache.remove(url).await;
            return Err(corrupt("has no body".into()));
        };
        loop {
            if aborted(self.opts) {
                return Err(LoadError::Aborted.into());
            }
            let t = Instant::now();
            let chunk = reader.read().await;
            self.report.ms_cache += ms(t);
            match chunk {
                Ok(Read::Chunk(c)) => {
                    self.report.from_cache += c.length() as u64;
                    self.report.bytes += c.length() as u64;
                    // Bytes the cache should not have held fail the parse: the entry goes.
                    if let Err(e) = self.feed(backend, &c, 0, hash) {
                        self.drop_entry(url).await;
                        return Err(corrupt(format!("is not a valid shard ({e})")));
                    }
                    self.emit("cache", i, url, progress, false);
                }
                Ok(Read::End | Read::Stalled) => break,
                Err(e) => {
                    self.drop_entry(url).await;
                    return Err(corrupt(format!("could not be read ({})", js_message(&e))));
                }
            }
        }
        let got = self.stream.shard_pos();
        if got != record.bytes {
            self.drop_entry(url).await;
            return Err(corrupt(format!("has {got} of {} bytes", record.bytes)));
        }
        if let (Some(want), Some(h)) = (&spec.sha256, hash.take()) {
            if &hex(&h.finalize()) != want {
                self.drop_entry(url).await;
                return Err(corrupt("does not match the manifest's sha256".into()));
            }
        }
        let t = Instant::now();
        if let Err(e) = self.stream.end_shard(backend) {
            self.drop_entry(url).await;
            return Err(corrupt(format!("is not a valid shard ({e})")));
        }
        self.report.ms_upload += ms(t);
        self.emit("cache", i, url, progress, true);
        Ok(true)
    }

    async fn drop_entry(&self, url: &str) {
        if let Some(c) = &self.cache {
            let _ = c.remove(url).await;
        }
    }
}

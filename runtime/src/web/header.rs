//! The first shard's header alone, for the planner: read from the shard cache when the shard
//! is committed there (an offline app plans without the network), else fetched with
//! `Range: bytes=0-1048575`, growing by at most 1 MiB a request while [`parse_header`] answers
//! [`Parsed::NeedMore`] — so at most the header + 1 MiB crosses the network before the plan
//! decides, whatever the model's size. A server that ignores Range (200, the whole file) is
//! read only as far as the header needs, then its body is cancelled.

use super::body::{BodyReader, Read};
use super::load::download::{content_range, fetch, net_err};
use super::load::{aborted, resolve, LoadOptions, ModelSource, ShardSpec};
use super::platform::{js_message, scope, Scope};
use super::store::Store;
use crate::error::GgufError;
use crate::gguf::{parse_header, GgufHeader, Limits, Parsed, GGUF_MAGIC};
use crate::loader::LoadError;

/// The first request's range, and the most one step adds.
pub const HEADER_STEP: u64 = 1 << 20;

/// A header and what reading it cost.
#[derive(Clone, Debug)]
pub struct FetchedHeader {
    pub header: GgufHeader,
    /// The first shard's URL.
    pub url: String,
    /// Shards the source names.
    pub shards: usize,
    /// Body bytes received from the network (0 when read from the cache), including any a
    /// server that ignored Range sent before the body was cancelled.
    pub network_bytes: u64,
    pub from_cache: bool,
}

/// Reads the header of `source`'s first shard (see the module's doc).
pub async fn fetch_header(source: &ModelSource, opts: &LoadOptions) -> Result<FetchedHeader, LoadError> {
    let specs = resolve(source, opts).await?;
    let spec = specs.first().ok_or_else(|| LoadError::Sequence("the model source names no shard".into()))?;
    let sc = scope().map_err(LoadError::Cache)?;
    if opts.use_cache {
        if let Some(header) = from_cache(&sc, spec, opts).await {
            return Ok(FetchedHeader { header, url: spec.url.clone(), shards: specs.len(), network_bytes: 0, from_cache: true });
        }
    }
    let (header, network_bytes) = from_network(&sc, spec, opts).await?;
    Ok(FetchedHeader { header, url: spec.url.clone(), shards: specs.len(), network_bytes, from_cache: false })
}

/// The bytes held so far and how many the parser wants next.
struct Prefix {
    buf: Vec<u8>,
    /// The file's size, once known (manifest, Content-Range, Content-Length, or the end seen).
    size: Option<u64>,
    want: u64,
    limits: Limits,
}

impl Prefix {
    fn new(size: Option<u64>) -> Prefix {
        Prefix { buf: Vec::new(), size, want: HEADER_STEP, limits: Limits::default() }
    }

    fn have(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Bytes to hold before the next parse: never past the file's end or the header limit.
    fn target(&self) -> u64 {
        self.want.min(self.size.unwrap_or(u64::MAX)).min(self.limits.max_header_bytes)
    }

    /// Enough is held for the next parse (a chunk may have brought more than the target).
    fn full(&self) -> bool {
        self.have() >= self.target()
    }

    /// Appends what `chunk` holds after its first `skip` bytes (all of them: a body read on
    /// cannot give back what a step does not need yet).
    fn push(&mut self, chunk: &js_sys::Uint8Array, skip: u64) {
        let n = chunk.length() as u64;
        if n > skip {
            let start = self.buf.len();
            self.buf.resize(start + (n - skip) as usize, 0);
            chunk.subarray(skip as u32, n as u32).copy_to(&mut self.buf[start..]);
        }
    }

    /// Parses what is held; `ended`: the file ends here. None: more bytes are needed (the
    /// target has grown: doubling, by at most [`HEADER_STEP`], as `gguf::read_header` does).
    fn parse(&mut self, url: &str, ended: bool, content_type: &str) -> Result<Option<GgufHeader>, LoadError> {
        if ended {
            self.size = Some(self.have());
        }
        let magic = &self.buf[..self.buf.len().min(4)];
        if magic != &GGUF_MAGIC[..magic.len()] || (ended && magic.len() < 4) {
            // An HTML page served with 200 is the likelier cause: say what arrived.
            let start = String::from_utf8_lossy(&self.buf[..self.buf.len().min(24)]).into_owned();
            return Err(LoadError::NotGguf { url: url.to_owned(), start, content_type: content_type.to_owned() });
        }
        match parse_header(&self.buf, self.size, &self.limits) {
            Ok(Parsed::Header(h)) => Ok(Some(*h)),
            Ok(Parsed::NeedMore { total }) => {
                let have = self.have();
                let next = total.max(have + have.min(HEADER_STEP));
                if ended || self.size.is_some_and(|s| have >= s) || have >= self.limits.max_header_bytes {
                    // The parser checks against a known size, so this is a defect, not a file.
                    return Err(LoadError::Gguf { path: url.to_owned(), source: GgufError::Truncated { what: "header", needed: next, file_size: have } });
                }
                self.want = next;
                Ok(None)
            }
            Err(source) => Err(LoadError::Gguf { path: url.to_owned(), source }),
        }
    }
}

/// The header from a committed cache entry, or None (no entry, or one that cannot be read or
/// parsed: the network has the truth, and the loader deals with the bad entry).
async fn from_cache(sc: &Scope, spec: &ShardSpec, opts: &LoadOptions) -> Option<GgufHeader> {
    let (store, _) = Store::open(opts.store, sc).await.ok()?;
    let (record, reader) = store.lookup(&spec.url, spec.sha256.as_deref()).await.ok()??;
    let mut reader = reader?;
    let mut p = Prefix::new(Some(record.bytes));
    let found = loop {
        if aborted(opts) {
            break None;
        }
        let ended = loop {
            match reader.read().await {
                Ok(Read::Chunk(c)) => {
                    p.push(&c, 0);
                    if p.full() {
                        break false;
                    }
                }
                Ok(Read::End) => break true,
                Ok(Read::Stalled) | Err(_) => {
                    reader.cancel();
                    return None;
                }
            }
        };
        match p.parse(&spec.url, ended, "") {
            Ok(Some(h)) => break Some(h),
            Ok(None) if !ended => continue,
            _ => break None,
        }
    };
    reader.cancel();
    found
}

/// `GET url` with `Range: bytes=from-to` (inclusive).
fn range_request(url: &str, from: u64, to: u64, opts: &LoadOptions) -> Result<web_sys::Request, LoadError> {
    let err = |e: &wasm_bindgen::JsValue| net_err(url, 0, from, e);
    let init = web_sys::RequestInit::new();
    init.set_method("GET");
    // As the loader's requests: the browser's HTTP cache would hold a second copy.
    init.set_cache(web_sys::RequestCache::NoStore);
    let headers = web_sys::Headers::new().map_err(|e| err(&e))?;
    headers.set("Range", &format!("bytes={from}-{to}")).map_err(|e| err(&e))?;
    init.set_headers(&headers);
    init.set_signal(opts.signal.as_ref());
    web_sys::Request::new_with_str_and_init(url, &init).map_err(|e| err(&e))
}

/// An open response body.
struct Body {
    reader: BodyReader,
    /// Bytes still to discard: a 200 to a range request starts at byte 0, before what is held.
    skip: u64,
    /// A 200 (the whole file): kept open and read on while the parser wants more.
    whole: bool,
}

/// Fetches the header; returns it and the network bytes received. Failed requests and bodies
/// are retried from the bytes held (as the loader resumes), at most `max_attempts` times in a
/// row without progress.
async fn from_network(sc: &Scope, spec: &ShardSpec, opts: &LoadOptions) -> Result<(GgufHeader, u64), LoadError> {
    let url = spec.url.as_str();
    let mut p = Prefix::new(spec.bytes);
    let mut received = 0u64;
    let mut failures = 0u32;
    let mut problem = String::new();
    let mut content_type = String::new();
    let mut body: Option<Body> = None;
    loop {
        if aborted(opts) {
            if let Some(b) = &body {
                b.reader.cancel();
            }
            return Err(LoadError::Aborted);
        }
        if body.is_none() {
            if failures >= opts.max_attempts {
                return Err(LoadError::Network { url: url.to_owned(), attempts: failures, at: p.have(), message: problem });
            }
            if failures > 0 {
                sc.sleep(opts.retry_delay_ms.saturating_mul(1 << (failures - 1).min(10))).await;
            }
            // At least one byte: a target already held would be a parser that asks for no more.
            let (from, to) = (p.have(), p.target().max(p.have() + 1) - 1);
            let resp = match fetch(sc, &range_request(url, from, to, opts)?, url, opts).await {
                Ok(r) => r,
                Err(LoadError::Network { message, .. }) => {
                    problem = message;
                    failures += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = resp.status();
            let header = |name: &str| resp.headers().get(name).ok().flatten();
            content_type = header("content-type").unwrap_or_default();
            let total = match status {
                206 => {
                    let cr = header("content-range").unwrap_or_default();
                    let (start, total) =
                        content_range(&cr).ok_or_else(|| LoadError::Http { url: url.to_owned(), status, detail: format!(" with Content-Range {cr:?}") })?;
                    if start != from {
                        return Err(LoadError::Length { url: url.to_owned(), what: "Content-Range start".into(), expected: from, found: start });
                    }
                    total.map(|t| (t, "Content-Range total"))
                }
                200 => header("content-length").and_then(|v| v.parse::<u64>().ok()).map(|t| (t, "Content-Length")),
                // Asked past the end: the file is shorter than the bytes held (it changed).
                416 => return Err(LoadError::Length { url: url.to_owned(), what: "file size".into(), expected: p.size.unwrap_or(from), found: from }),
                s if s >= 500 => {
                    problem = format!("HTTP {s}");
                    failures += 1;
                    continue;
                }
                _ => {
                    let detail = resp.status_text();
                    return Err(LoadError::Http { url: url.to_owned(), status, detail: if detail.is_empty() { detail } else { format!(" {detail}") } });
                }
            };
            if let Some((t, what)) = total {
                match p.size {
                    Some(want) if want != t => return Err(LoadError::Length { url: url.to_owned(), what: what.into(), expected: want, found: t }),
                    _ => p.size = Some(t),
                }
            }
            let Some(reader) = resp.body().and_then(|b| BodyReader::new(&b)) else {
                problem = "a response without a body".into();
                failures += 1;
                continue;
            };
            body = Some(Body { reader, skip: if status == 200 { from } else { 0 }, whole: status == 200 });
        }
        let Some(b) = body.as_mut() else { continue };
        // Read until the target is held or the body ends.
        let before = p.have();
        let outcome = loop {
            match b.reader.read_within(sc, opts.stall_timeout_ms).await {
                Ok(Read::Chunk(c)) => {
                    let n = c.length() as u64;
                    received += n;
                    let skip = b.skip.min(n);
                    b.skip -= skip;
                    p.push(&c, skip);
                    if p.full() {
                        break Ok(false);
                    }
                }
                Ok(Read::End) => break Ok(true),
                Ok(Read::Stalled) => {
                    b.reader.cancel();
                    break Err(format!("no data for {} ms", opts.stall_timeout_ms));
                }
                Err(_) if aborted(opts) => return Err(LoadError::Aborted),
                Err(e) => break Err(js_message(&e)),
            }
        };
        let progressed = p.have() > before;
        if progressed {
            failures = 0;
        }
        let body_ended = match outcome {
            Ok(ended) => ended,
            Err(message) => {
                problem = message;
                failures += 1;
                body = None;
                continue;
            }
        };
        // The file ends here: at its known size, or where a 200 without a length ended.
        let ended = p.size.is_some_and(|s| p.have() >= s) || (body_ended && b.whole && p.size.is_none());
        if body_ended && !ended && (b.whole || !progressed) {
            // A connection that closed early (a 200 short of its length, an empty range):
            // retried with a range from the bytes held.
            problem = format!("the body ended at byte {}", p.have());
            failures += 1;
        }
        // Only a 200 that has more to give stays open; a range's body is done.
        if body_ended || !b.whole || ended {
            if let Some(b) = body.take() {
                if !body_ended {
                    b.reader.cancel();
                }
            }
        }
        let parsed = p.parse(url, ended, &content_type);
        if !matches!(parsed, Ok(None)) {
            if let Some(b) = body.take() {
                b.reader.cancel();
            }
        }
        if let Some(h) = parsed? {
            return Ok((h, received));
        }
    }
}

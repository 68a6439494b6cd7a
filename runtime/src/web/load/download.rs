//! Fetching a shard: requests (`Range` to resume), each response checked (status,
//! Content-Range, length, ETag, GGUF magic) and resumed after a backoff when it fails or ends early.

use super::{aborted, ms, LoadOptions, Progress, Run, ShardSpec};
use crate::loader::LoadError;
use crate::model::Backend;
use crate::web::body::{BodyReader, Read};
use crate::web::platform::{js_message, Scope};
use crate::web::store::Keep;
use sha2::Sha256;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_time::Instant;

pub(in crate::web) fn net_err(url: &str, attempts: u32, at: u64, e: &JsValue) -> LoadError {
    LoadError::Network { url: url.to_owned(), attempts, at, message: js_message(e) }
}

pub(super) fn request(url: &str, range_from: Option<u64>, opts: &LoadOptions) -> Result<web_sys::Request, LoadError> {
    let init = web_sys::RequestInit::new();
    init.set_method("GET");
    // The browser's HTTP cache would hold a second copy of every shard.
    init.set_cache(web_sys::RequestCache::NoStore);
    if let Some(from) = range_from {
        let headers = web_sys::Headers::new().map_err(|e| net_err(url, 0, from, &e))?;
        headers.set("Range", &format!("bytes={from}-")).map_err(|e| net_err(url, 0, from, &e))?;
        init.set_headers(&headers);
    }
    init.set_signal(opts.signal.as_ref());
    web_sys::Request::new_with_str_and_init(url, &init).map_err(|e| net_err(url, 0, range_from.unwrap_or(0), &e))
}

pub(in crate::web) async fn fetch(sc: &Scope, req: &web_sys::Request, url: &str, opts: &LoadOptions) -> Result<web_sys::Response, LoadError> {
    match sc.within(&sc.fetch(req), opts.stall_timeout_ms).await {
        Ok(Some(r)) => Ok(r.unchecked_into()),
        Ok(None) => Err(LoadError::Network { url: url.to_owned(), attempts: 1, at: 0, message: format!("no response within {} ms", opts.stall_timeout_ms) }),
        Err(_) if aborted(opts) => Err(LoadError::Aborted),
        Err(e) => Err(net_err(url, 1, 0, &e)),
    }
}

/// Parses `Content-Range: bytes a-b/total` → (a, total).
pub(in crate::web) fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, _) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, total.trim().parse().ok()))
}

impl<B: Backend> Run<'_, B> {
    /// Fetches the rest of the shard (from `stream.shard_pos()`), resuming after failures.
    /// Returns the ETag, when the server sent one.
    pub(super) async fn download(
        &mut self,
        i: usize,
        spec: &ShardSpec,
        backend: &mut B,
        hash: &mut Option<Sha256>,
        keep: &mut Option<Keep>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Option<String>, LoadError> {
        let url = spec.url.as_str();
        let mut expected = spec.bytes;
        let mut etag = None;
        let mut failures = 0u32;
        // What went wrong last, for the error when the attempts run out.
        let mut problem = String::new();
        let mut magic = Vec::with_capacity(4);
        loop {
            if aborted(self.opts) {
                return Err(LoadError::Aborted);
            }
            let pos = self.stream.shard_pos();
            if failures > 0 {
                if failures >= self.opts.max_attempts {
                    return Err(LoadError::Network { url: url.to_owned(), attempts: failures, at: pos, message: problem });
                }
                let delay = self.opts.retry_delay_ms.saturating_mul(1 << (failures - 1).min(10));
                self.sc.sleep(delay).await;
                self.report.resumes += 1;
            }
            let req = request(url, (pos > 0).then_some(pos), self.opts)?;
            let t = Instant::now();
            let resp = match fetch(&self.sc, &req, url, self.opts).await {
                Ok(r) => r,
                Err(LoadError::Network { message, .. }) => {
                    self.report.ms_network += ms(t);
                    problem = message;
                    failures += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.report.ms_network += ms(t);
            let status = resp.status();
            let header = |name: &str| resp.headers().get(name).ok().flatten();
            if status >= 500 {
                if failures + 1 >= self.opts.max_attempts {
                    return Err(LoadError::Http { url: url.to_owned(), status, detail: String::new() });
                }
                problem = format!("HTTP {status}");
                failures += 1;
                continue;
            }
            // A wrong length is reported after the first bytes were checked for GGUF's magic,
            // which names the likelier cause (an HTML page) when they are not.
            let mut wrong_length = None;
            // Bytes of this response to discard: all of a 200 to a range request up to `pos`.
            let skip = match status {
                200 => {
                    if let Some(len) = header("content-length").and_then(|v| v.parse::<u64>().ok()) {
                        match expected {
                            Some(want) if want != len => {
                                let e = LoadError::Length { url: url.to_owned(), what: "Content-Length".into(), expected: want, found: len };
                                if pos > 0 {
                                    return Err(e);
                                }
                                wrong_length = Some(e);
                            }
                            _ => expected = Some(len),
                        }
                    }
                    pos
                }
                206 => {
                    let cr = header("content-range").unwrap_or_default();
                    let (start, total) =
                        content_range(&cr).ok_or_else(|| LoadError::Http { url: url.to_owned(), status, detail: format!(" with Content-Range {cr:?}") })?;
                    if start != pos {
                        return Err(LoadError::Length { url: url.to_owned(), what: "Content-Range start".into(), expected: pos, found: start });
                    }
                    if let (Some(want), Some(t)) = (expected, total) {
                        if want != t {
                            return Err(LoadError::Length { url: url.to_owned(), what: "Content-Range total".into(), expected: want, found: t });
                        }
                    }
                    expected = expected.or(total);
                    0
                }
                _ => {
                    let detail = resp.status_text();
                    return Err(LoadError::Http { url: url.to_owned(), status, detail: if detail.is_empty() { detail } else { format!(" {detail}") } });
                }
            };
            if let Some(new) = header("etag") {
                // Bytes of two versions of a file must not be spliced together.
                if let Some(old) = etag.as_ref().filter(|old| **old != new) {
                    return Err(LoadError::Http {
                        url: url.to_owned(),
                        status,
                        detail: format!(": the file changed during the download (ETag {old} → {new})"),
                    });
                }
                etag = Some(new);
            }
            let Some(mut reader) = resp.body().and_then(|b| BodyReader::new(&b)) else {
                problem = "a response without a body".into();
                failures += 1;
                continue;
            };
            let content_type = header("content-type").unwrap_or_default();
            let mut skip = skip;
            let mut progressed = false;
            let ended = loop {
                if aborted(self.opts) {
                    reader.cancel();
                    return Err(LoadError::Aborted);
                }
                let t = Instant::now();
                let chunk = reader.read_within(&self.sc, self.opts.stall_timeout_ms).await;
                self.report.ms_network += ms(t);
                let chunk = match chunk {
                    Ok(Read::Chunk(c)) => c,
                    Ok(Read::End) => match wrong_length.take() {
                        Some(e) => return Err(e),
                        None => break true,
                    },
                    Ok(Read::Stalled) => {
                        reader.cancel();
                        problem = format!("no data for {} ms", self.opts.stall_timeout_ms);
                        break false;
                    }
                    Err(_) if aborted(self.opts) => return Err(LoadError::Aborted),
                    Err(e) => {
                        problem = js_message(&e);
                        break false;
                    }
                };
                let n = chunk.length() as u64;
                self.report.from_network += n;
                let used = n.saturating_sub(skip);
                self.report.discarded += n - used;
                if used > 0 && self.stream.shard_pos() < 4 {
                    // The first bytes must be GGUF's magic: an HTML page served with 200 is not a model.
                    let at = (n - used) as u32;
                    let head = chunk.subarray(at, at + (used as u32).min(4 - magic.len() as u32)).to_vec();
                    magic.extend_from_slice(&head);
                    if magic.as_slice() != &b"GGUF"[..magic.len()] {
                        let mut start = vec![0u8; (used as usize).min(24)];
                        chunk.subarray(at, at + start.len() as u32).copy_to(&mut start);
                        return Err(LoadError::NotGguf { url: url.to_owned(), start: String::from_utf8_lossy(&start).into_owned(), content_type });
                    }
                }
                if let Some(e) = wrong_length.take() {
                    return Err(e);
                }
                if let Some(e) = expected {
                    if self.stream.shard_pos() + used > e {
                        return Err(LoadError::ShardTooLong { shard: url.to_owned(), expected: e });
                    }
                }
                self.report.bytes += used;
                if let Some(part) = self.feed(backend, &chunk, skip, hash)? {
                    if let Some(k) = keep.as_mut() {
                        if let Err(e) = k.push(&part).await {
                            if let Some(k) = keep.take() {
                                k.discard().await;
                            }
                            self.cache_failed(e);
                        }
                    }
                }
                skip = skip.saturating_sub(n);
                progressed |= used > 0;
                self.emit("download", i, url, progress, false);
            };
            if progressed {
                failures = 0;
            }
            let pos = self.stream.shard_pos();
            match expected {
                // Done: everything announced arrived (or the body ended and no size was known).
                Some(e) if pos == e => return Ok(etag),
                None if ended => return Ok(etag),
                // A dropped connection or a body that ended early: resume.
                _ => {
                    if ended {
                        problem = format!("the body ended at byte {pos}");
                    }
                    failures += 1;
                }
            }
        }
    }
}

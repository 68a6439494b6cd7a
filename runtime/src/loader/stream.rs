//! The one loading path: the bytes of each shard, in file order and in pieces of any size, become
//! backend weights as they arrive. The header is parsed from the growing prefix; each tensor the
//! model uses goes, piece by piece, to `Backend::write_weight` (which repacks it into GPU buffers
//! or keeps it in CPU memory); bytes of tensors it does not use are skipped. So the host holds
//! the header (metadata, the tokenizer's tables), one incoming piece and the backend's bounded
//! staging window — never the model. Natively the same path reads files; in the browser it is fed
//! from fetch (`web/`).

use super::LoadError;
use crate::error::ModelError;
use crate::gguf::{parse_header, GgufHeader, GgufModel, Limits, Parsed};
use crate::model::{same_shape, Backend, Model, ModelConfig, WeightProvider, Weights};
use crate::quant::GgmlType;
use std::collections::{HashMap, HashSet};
use std::ops::Range;

/// A tensor of the shard being read, in offset order.
struct Planned {
    name: String,
    /// Absolute byte range in the shard.
    range: Range<u64>,
    ty: GgmlType,
    shape: Vec<u64>,
    /// Used by the model (else its bytes are skipped).
    wanted: bool,
}

enum Feed<P> {
    /// `prefix`: the shard's first bytes, until the header parses from them; `need`: parse again
    /// once this many are held (the parser's lower bound, grown geometrically).
    Header { prefix: Vec<u8>, need: u64 },
    /// `next`: index into `plan` of the tensor being received or awaited.
    Body { plan: Vec<Planned>, next: usize, pending: Option<P> },
}

struct Shard<P> {
    /// The file name or URL, for errors.
    name: String,
    index: usize,
    /// Bytes announced (file size, manifest, Content-Length), when known.
    size: Option<u64>,
    /// Bytes fed so far.
    pos: u64,
    feed: Feed<P>,
}

/// Receives a model's shards in order (shard 0 first) and builds the model on backend `B`.
pub struct ModelStream<B: Backend> {
    limits: Limits,
    config: Option<ModelConfig>,
    /// name → shape (ggml order) of every tensor the configuration may use
    wanted: HashMap<String, Vec<u64>>,
    received: HashMap<String, B::Weight>,
    /// Tensor names of the shards read so far (duplicates across shards are an error).
    seen: HashSet<String>,
    headers: Vec<GgufHeader>,
    shard: Option<Shard<B::Pending>>,
    /// `split.count` of shard 0 (1 for a plain file).
    n_shards: Option<usize>,
    bytes_fed: u64,
}

/// First prefix length tried: most headers (without a large vocabulary) fit.
const FIRST_PREFIX: u64 = 1 << 20;

impl<B: Backend> Default for ModelStream<B> {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl<B: Backend> ModelStream<B> {
    pub fn new(limits: Limits) -> Self {
        ModelStream {
            limits,
            config: None,
            wanted: HashMap::new(),
            received: HashMap::new(),
            seen: HashSet::new(),
            headers: Vec::new(),
            shard: None,
            n_shards: None,
            bytes_fed: 0,
        }
    }

    /// Shards in the model, once shard 0's header has been read.
    pub fn n_shards(&self) -> Option<usize> {
        self.n_shards
    }

    /// The configuration, once shard 0's header has been read.
    pub fn config(&self) -> Option<&ModelConfig> {
        self.config.as_ref()
    }

    /// Bytes fed over all shards.
    pub fn bytes_fed(&self) -> u64 {
        self.bytes_fed
    }

    /// Bytes fed of the current shard (where a resumed download continues).
    pub fn shard_pos(&self) -> u64 {
        self.shard.as_ref().map_or(0, |s| s.pos)
    }

    /// Starts shard `index` (0-based, in order). `name` labels errors; `size` is its length
    /// when known.
    pub fn begin_shard(&mut self, name: &str, size: Option<u64>) -> Result<(), LoadError> {
        if let Some(s) = &self.shard {
            return Err(LoadError::Sequence(format!("shard {} was not ended before {name} began", s.name)));
        }
        let index = self.headers.len();
        if let Some(n) = self.n_shards {
            if index >= n {
                return Err(LoadError::ExtraShard { shard: name.to_owned(), count: n });
            }
        }
        let need = size.map_or(FIRST_PREFIX, |s| s.min(FIRST_PREFIX));
        self.shard = Some(Shard { name: name.to_owned(), index, size, pos: 0, feed: Feed::Header { prefix: Vec::new(), need } });
        Ok(())
    }

    /// The next bytes of the current shard.
    pub fn feed(&mut self, backend: &mut B, bytes: &[u8]) -> Result<(), LoadError> {
        let Some(mut shard) = self.shard.take() else {
            return Err(LoadError::Sequence("bytes fed with no shard begun".into()));
        };
        let r = self.feed_shard(&mut shard, backend, bytes);
        self.shard = Some(shard);
        r
    }

    fn feed_shard(&mut self, shard: &mut Shard<B::Pending>, backend: &mut B, mut bytes: &[u8]) -> Result<(), LoadError> {
        let end = shard.pos + bytes.len() as u64;
        if let Some(size) = shard.size.filter(|&s| end > s) {
            return Err(LoadError::ShardTooLong { shard: shard.name.clone(), expected: size });
        }
        self.bytes_fed += bytes.len() as u64;
        // The header: copy into `prefix` only what parsing needs, never a whole shard.
        while let Feed::Header { prefix, need } = &mut shard.feed {
            if bytes.is_empty() {
                return Ok(());
            }
            let take = (*need).saturating_sub(prefix.len() as u64).clamp(1, bytes.len() as u64) as usize;
            prefix.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            shard.pos += take as u64;
            if (prefix.len() as u64) < *need {
                continue;
            }
            self.parse_prefix(shard, backend)?;
        }
        let start = shard.pos;
        shard.pos += bytes.len() as u64;
        body(shard, backend, &mut self.received, start, bytes)
    }

    /// Parses the header from the prefix held; on success the shard moves on to its body.
    fn parse_prefix(&mut self, shard: &mut Shard<B::Pending>, backend: &mut B) -> Result<(), LoadError> {
        let Feed::Header { prefix, need } = &mut shard.feed else { return Ok(()) };
        let gguf_err = |source| LoadError::Gguf { path: shard.name.clone(), source };
        match parse_header(prefix, shard.size, &self.limits).map_err(gguf_err)? {
            Parsed::NeedMore { total } => {
                let grown = (prefix.len() as u64).saturating_mul(2);
                *need = total.max(grown).min(shard.size.unwrap_or(u64::MAX));
                Ok(())
            }
            Parsed::Header(h) => {
                let prefix = std::mem::take(prefix);
                let plan = self.plan(&shard.name, shard.index, *h)?;
                let expected: Vec<(&str, GgmlType, &[u64])> = plan.iter().filter(|p| p.wanted).map(|p| (p.name.as_str(), p.ty, p.shape.as_slice())).collect();
                backend.expect_weights(&expected)?;
                shard.feed = Feed::Body { plan, next: 0, pending: None };
                // The prefix holds the header and maybe the first tensors' bytes.
                body(shard, backend, &mut self.received, 0, &prefix)
            }
        }
    }

    /// Checks a shard's header against the model so far and lists its tensors in file order.
    fn plan(&mut self, name: &str, index: usize, h: GgufHeader) -> Result<Vec<Planned>, LoadError> {
        let gguf_err = |source| LoadError::Gguf { path: name.to_owned(), source };
        let split = h.split().map_err(gguf_err)?;
        // (A split number past usize on wasm32 must not wrap onto a small one.)
        let no = split.map_or(0, |s| usize::try_from(s.no).unwrap_or(usize::MAX));
        if no != index {
            return Err(LoadError::ShardOrder { shard: name.to_owned(), expected: index, found: no });
        }
        if index == 0 {
            let config = ModelConfig::from_metadata(&h.metadata)?;
            self.wanted = Weights::wanted(&config)?.into_iter().collect();
            self.config = Some(config);
            self.n_shards = Some(split.map_or(1, |s| usize::try_from(s.count).unwrap_or(usize::MAX)));
        } else if let (Some(n), Some(s)) = (self.n_shards, split) {
            if usize::try_from(s.count).ok() != Some(n) {
                return Err(gguf_err(crate::GgufError::SplitCountMismatch { shard: s.no, expected: n as u64, found: s.count }));
            }
        }
        let mut plan = Vec::with_capacity(h.tensors.len());
        for t in &h.tensors {
            if !self.seen.insert(t.name.clone()) {
                return Err(gguf_err(crate::GgufError::DuplicateTensor { name: t.name.clone(), shard: Some(index as u32) }));
            }
            let wanted = match self.wanted.get(&t.name) {
                Some(shape) if !same_shape(&t.shape, shape) => {
                    return Err(ModelError::TensorShape { name: t.name.clone(), expected: shape.clone(), found: t.shape.clone() }.into())
                }
                Some(_) => true,
                None => false,
            };
            plan.push(Planned { name: t.name.clone(), range: h.tensor_range(t), ty: t.ty, shape: t.shape.clone(), wanted });
        }
        plan.sort_by_key(|p| p.range.start);
        self.headers.push(h);
        Ok(plan)
    }

    /// Ends the current shard: every tensor must have arrived whole.
    pub fn end_shard(&mut self, backend: &mut B) -> Result<(), LoadError> {
        let Some(mut shard) = self.shard.take() else {
            return Err(LoadError::Sequence("end of a shard that was not begun".into()));
        };
        // Zero-length tensors at the very end complete without bytes.
        if matches!(shard.feed, Feed::Header { .. }) {
            // A file smaller than the first prefix tried: its end is known now.
            shard.size = Some(shard.pos);
            self.parse_prefix(&mut shard, backend)?;
        }
        let pos = shard.pos;
        body(&mut shard, backend, &mut self.received, pos, &[])?;
        let needed = match &shard.feed {
            Feed::Header { .. } => Some(("the header", shard.pos + 1)),
            Feed::Body { plan, next, .. } => plan.get(*next).map(|t| (t.name.as_str(), t.range.end)),
        };
        if let Some((what, needed)) = needed {
            return Err(LoadError::ShardTruncated { shard: shard.name, got: shard.pos, what: what.to_owned(), needed });
        }
        Ok(())
    }

    /// Assembles the model once every shard has ended.
    pub fn finish(mut self) -> Result<(GgufModel, Model<B>), LoadError> {
        if let Some(s) = &self.shard {
            return Err(LoadError::Sequence(format!("shard {} was not ended", s.name)));
        }
        let config = self.config.take().ok_or_else(|| LoadError::Sequence("no shard was read".into()))?;
        let gguf = GgufModel::new(std::mem::take(&mut self.headers)).map_err(|source| LoadError::Gguf { path: "model".into(), source })?;
        let weights = Weights::load(&config, &mut Received(&mut self.received))?;
        Ok((gguf, Model { config, weights }))
    }
}

/// Routes `bytes` (starting at absolute shard offset `at`) into the tensors they belong to.
fn body<B: Backend>(
    shard: &mut Shard<B::Pending>,
    backend: &mut B,
    received: &mut HashMap<String, B::Weight>,
    mut at: u64,
    mut bytes: &[u8],
) -> Result<(), LoadError> {
    let Feed::Body { plan, next, pending } = &mut shard.feed else { return Ok(()) };
    while let Some(t) = plan.get(*next) {
        if at < t.range.start {
            // Padding, or a tensor the model does not use.
            let skip = (t.range.start - at).min(bytes.len() as u64);
            if skip == 0 {
                break;
            }
            at += skip;
            bytes = &bytes[skip as usize..];
            continue;
        }
        let n = (t.range.end - at).min(bytes.len() as u64) as usize;
        if n == 0 && !t.range.is_empty() {
            break;
        }
        if t.wanted {
            let w = match pending {
                Some(w) => w,
                None => pending.insert(backend.begin_weight(&t.name, t.ty, &t.shape)?),
            };
            backend.write_weight(w, &bytes[..n])?;
        }
        at += n as u64;
        bytes = &bytes[n..];
        if at == t.range.end {
            if let Some(w) = pending.take() {
                received.insert(t.name.clone(), backend.finish_weight(w)?);
            }
            *next += 1;
        }
    }
    Ok(())
}

/// The weights received, handed to [`Weights::load`] by name (shapes were checked on arrival).
struct Received<'a, W>(&'a mut HashMap<String, W>);

impl<W> WeightProvider<W> for Received<'_, W> {
    fn take(&mut self, name: &str, _expected: &[u64]) -> Result<Option<W>, ModelError> {
        Ok(self.0.remove(name))
    }
}

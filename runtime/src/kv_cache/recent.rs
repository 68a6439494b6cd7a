//! [`RecentRows`]: which positions' K and V rows a quantized cache keeps as f16 copies, and in
//! which slots (the bookkeeping shared by the CPU cache and the GPU's).

#[cfg(doc)]
use super::KvCache;
use super::{KvType, KV_SINK};

/// Which positions' K and V rows a quantized cache [keeps as f16 copies](KvCache::with_recent)
/// beside the quantized ones, per layer, and in which slot: the bookkeeping of the CPU cache
/// and of the GPU's (which keeps its copies in the layer's buffer, read by attention.wgsl by
/// the same rules).
#[derive(Clone, Debug, Default)]
pub struct RecentRows {
    /// Positions `0..sink` are kept (slot `p`).
    pub sink: usize,
    /// A query at `pos` reads positions `pos − recent + 1 ..= pos` from copies (slot
    /// `sink + p % recent`); 0 for no copies at all.
    pub recent: usize,
    /// [n_layers]: positions `lo..hi` (all ≥ `sink`) held in the recent slots.
    span: Vec<(usize, usize)>,
    /// [n_layers]: positions `0..n` held in the sink slots.
    sink_n: Vec<usize>,
}

impl RecentRows {
    /// For a quantized `ty` and `recent > 0`: the first [`KV_SINK`] positions and a query's
    /// last `recent`, both capped at `n_ctx`; else none (f32 / f16 rows are exact already).
    pub fn new(ty: KvType, n_layers: usize, n_ctx: usize, recent: usize) -> RecentRows {
        if !ty.is_quantized() || recent == 0 {
            return RecentRows::default();
        }
        RecentRows { sink: KV_SINK.min(n_ctx), recent: recent.min(n_ctx), span: vec![(0, 0); n_layers], sink_n: vec![0; n_layers] }
    }

    /// Rows per layer and head.
    pub fn slots(&self) -> usize {
        self.sink + self.recent
    }

    /// Bytes of the f16 copies a cache of type `ty` keeps with `recent` (0 unless quantized),
    /// for `n_layers` layers of `width_k + width_v` values per position (all KV heads).
    pub fn bytes(ty: KvType, n_layers: u64, n_ctx: u64, recent: u64, width_k: u64, width_v: u64) -> u64 {
        let size = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
        let slots = RecentRows::new(ty, 0, size(n_ctx), size(recent)).slots() as u64;
        n_layers.saturating_mul(slots).saturating_mul(width_k.saturating_add(width_v)).saturating_mul(2)
    }

    /// The slot of position `pos`.
    pub fn slot(&self, pos: usize) -> usize {
        if pos < self.sink {
            pos
        } else {
            self.sink + pos % self.recent
        }
    }

    /// Whether a query at `pos` reads position `p`'s rows from a copy when one is kept.
    pub fn reads_copy(&self, p: usize, pos: usize) -> bool {
        self.recent > 0 && (p < self.sink || p + self.recent > pos)
    }

    /// The slot holding `layer`'s rows of `pos`, when they are kept.
    pub fn kept(&self, layer: usize, pos: usize) -> Option<usize> {
        if self.recent == 0 {
            return None;
        }
        let held = if pos < self.sink { pos < self.sink_n[layer] } else { (self.span[layer].0..self.span[layer].1).contains(&pos) };
        held.then(|| self.slot(pos))
    }

    /// `layer`'s sink positions held (`0..n`) and recent span (`lo..hi`), as attention.wgsl
    /// takes them.
    pub fn held(&self, layer: usize) -> (usize, (usize, usize)) {
        match self.recent {
            0 => (0, (0, 0)),
            _ => (self.sink_n[layer], self.span[layer]),
        }
    }

    /// Records that `layer`'s positions `pos0..pos0 + n` were written (anything held from
    /// `pos0` on is replaced) and returns the positions whose rows now go to their slots: the
    /// batch's sink positions and its last `recent` ones.
    pub fn keep(&mut self, layer: usize, pos0: usize, n: usize) -> [std::ops::Range<usize>; 2] {
        if self.recent == 0 || n == 0 {
            return [0..0, 0..0];
        }
        let (sink, end) = (self.sink, pos0 + n);
        // held sink positions stay valid below the batch, unless a gap separates them from it
        let sink_n = &mut self.sink_n[layer];
        if pos0 < sink && pos0 <= *sink_n {
            *sink_n = end.min(sink);
        }
        let first = end.saturating_sub(self.recent).max(pos0).max(sink);
        if end > sink {
            let (lo, hi) = self.span[layer];
            let b0 = pos0.max(sink);
            let lo = if hi < b0 || lo > b0 { b0 } else { lo };
            self.span[layer] = (lo.max(end.saturating_sub(self.recent)), end);
        }
        [pos0.min(sink)..end.min(sink), first.min(end)..end]
    }

    /// The longest prefix of `n` filled positions a continuation can start from exactly: the
    /// next query (at position `n'`) must find the copies it reads, positions before `n'`
    /// within `recent` of it and the sink. Later positions may have replaced some of them in
    /// their slots; then only the sink's positions are kept (f32 / f16 rows: `n`).
    pub fn resume_point(&self, n: usize) -> usize {
        if self.recent == 0 || n <= self.sink {
            return n;
        }
        let first_read = self.sink.max((n + 1).saturating_sub(self.recent));
        let held = self.span.iter().zip(&self.sink_n).all(|(&(lo, hi), &sink_n)| sink_n >= self.sink && hi >= n && lo <= first_read);
        if held {
            n
        } else {
            self.sink
        }
    }

    /// Forgets what is held from `n_pos` on.
    pub fn truncate(&mut self, n_pos: usize) {
        for (lo, hi) in &mut self.span {
            *hi = (*hi).min(n_pos);
            *lo = (*lo).min(*hi);
        }
        for n in &mut self.sink_n {
            *n = (*n).min(n_pos);
        }
    }

    /// Forgets everything held.
    pub fn clear(&mut self) {
        self.truncate(0);
    }
}

//! A bounded little-endian reader over a (possibly incomplete) prefix of a GGUF file.
//! Every read first checks the bytes it needs against the known file size (→ error), the
//! header size limit (→ error) and the prefix held (→ "need more").

use crate::error::GgufError;

/// Why parsing stopped before producing a header.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The prefix is too short: at least this many bytes (from the file start) are needed.
    Short(u64),
    Fail(GgufError),
}

impl From<GgufError> for Stop {
    fn from(e: GgufError) -> Self {
        Stop::Fail(e)
    }
}

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: u64,
    file_size: Option<u64>,
    max_header: u64,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], file_size: Option<u64>, max_header: u64) -> Self {
        Cursor { buf, pos: 0, file_size, max_header }
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes held past the current position.
    pub fn remaining(&self) -> u64 {
        (self.buf.len() as u64).saturating_sub(self.pos)
    }

    /// Checks that `n` more bytes from the current position exist, without consuming them.
    /// `n` may be a lower bound of what an item needs (e.g. an array's minimum size).
    pub fn ensure(&self, n: u64, what: &'static str) -> Result<(), Stop> {
        // Saturating: an absurd n still compares greater than any real size.
        let end = self.pos.saturating_add(n);
        if let Some(fs) = self.file_size {
            if end > fs {
                return Err(GgufError::Truncated { what, needed: end, file_size: fs }.into());
            }
        }
        if end > self.max_header {
            return Err(GgufError::HeaderTooLarge { needed: end, limit: self.max_header }.into());
        }
        if end > self.buf.len() as u64 {
            return Err(Stop::Short(end));
        }
        Ok(())
    }

    pub fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], Stop> {
        self.ensure(n, what)?;
        // ensure() proved pos + n <= buf.len(), so both fit in usize.
        let start = self.pos as usize;
        let end = start + n as usize;
        self.pos += n;
        Ok(&self.buf[start..end])
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Stop> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, Stop> {
        Ok(self.array::<1>(what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, Stop> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, Stop> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, Stop> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 length, then that many UTF-8 bytes (length checked against `max_len`
    /// before anything is allocated).
    pub fn string(&mut self, max_len: u64, what: &'static str) -> Result<String, Stop> {
        let offset = self.pos;
        let len = self.u64(what)?;
        if len > max_len {
            return Err(GgufError::StringTooLong { len, limit: max_len, offset }.into());
        }
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 { offset }.into()),
        }
    }
}

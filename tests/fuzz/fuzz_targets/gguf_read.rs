//! Fuzzes `read_header` (what `webgguf inspect` uses) over a reader that hands out the input in
//! chunks of 1–64 bytes, with the size known and unknown: it must agree with `parse_header` on the
//! whole input and never loop or over-read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;
use webgguf::gguf::{parse_header, read_header, Limits, Parsed, ReadHeaderError};

/// Returns at most `step` bytes per read.
struct Chunky<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    // Chunk size 1..=64 from the bytes themselves, so every GGUF seed is a valid input as is.
    let step = usize::from(data.iter().fold(0u8, |a, &b| a.wrapping_add(b)) % 64) + 1;
    let limits = Limits { max_header_bytes: 1 << 16, ..Limits::default() };
    let whole = parse_header(data, Some(data.len() as u64), &limits);
    for size in [Some(data.len() as u64), None] {
        let r = read_header(Chunky { data, step }, size, &limits);
        match (&whole, r) {
            (Ok(Parsed::Header(a)), Ok(b)) => assert_eq!(a.tensors, b.tensors),
            (Err(a), Err(ReadHeaderError::Gguf(b))) => assert_eq!(*a, b),
            (w, r) => panic!("parse_header: {w:?}, read_header (size {size:?}): {r:?}"),
        }
    }
});
